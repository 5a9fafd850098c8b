"""ResNet-50 on ImageNet, sparse from scratch (DST-EE, RigL, SET, static, dense).

    KERAS_BACKEND=jax python examples/resnet50_imagenet.py --data /data/imagenet
    python examples/resnet50_imagenet.py --method rigl --sparsity 0.9

Data: `--data DIR` with `train/` and `val/` folders of class subfolders (the
usual ImageNet layout); a DIR of class folders without `train/` is split
90/10. Without --data, tensorflow-datasets' `imagenet2012`, which needs its
manual download in place (tfds never fetches ImageNet itself). The input
pipeline (`imagenet_input.py`, tf.data, parallel decoding, prefetch) is the
papers': random-resized crops (8-100% of the area, aspect 3/4-4/3) to
224x224 with horizontal flips for training; shorter side to 256 and the
central 224x224 crop for evaluation.

Defaults: ResNet-50 v1 (`keras_dstee.models.resnet50_imagenet`), 100 epochs,
SGD momentum 0.9 (Nesterov), learning rate 0.1 per 256 images scaled
linearly with the batch (Goyal et al., 2017), 5 linear warm-up epochs, then
divided by 10 at epochs 30, 60 and 90 (He et al., 2016; Goyal et al., 2017),
label smoothing 0.1 and weight decay 1e-4 (the RigL ImageNet setup, Evci et
al., 2020, which DST-EE follows), batch 256.
"""

import os

import keras
from common import parser
from common import require
from common import train_and_report
from imagenet_input import folder_datasets
from imagenet_input import tfds_datasets
from runtime import configure
from runtime import resumed_epoch


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then divided by 10 at each boundary step."""

    def __init__(self, peak, warmup_steps, boundaries):
        self.peak, self.warmup_steps, self.boundaries = peak, warmup_steps, list(boundaries)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1) / max(self.warmup_steps, 1)
        factor = 1.0
        for boundary in self.boundaries:
            factor = keras.ops.where(step >= boundary, factor * 0.1, factor)
        return keras.ops.where(step < self.warmup_steps, warm, self.peak * factor)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "boundaries": self.boundaries}


def main():
    defaults = {
        "epochs": 100,
        "batch_size": 256,
        "lr": "auto",
        "lr_help": "peak learning rate; auto: 0.1 per 256 images of the batch",
        "out": os.path.join("runs", "imagenet"),
        "data_help": "a folder of class folders, or with train/ and val/ inside",
    }
    p = parser(__doc__.splitlines()[0], defaults)
    p.add_argument("--image-size", type=int, default=224, help="training crop size")
    args = p.parse_args()
    scope = configure(args)
    keras.utils.set_random_seed(args.seed)
    if args.smoke:
        args.epochs, args.batch_size, args.image_size, args.update_freq = 2, 4, 32, 1
        args.width = min(args.width, 0.125)
    start = resumed_epoch(args.out)
    pipeline = (args.image_size, args.batch_size, args.seed)
    schedule_args = (args.epochs, start, 2 if args.smoke else None, args.devices)
    if args.data:
        (train, val, steps_per_epoch), num_classes = folder_datasets(args.data, *pipeline, *schedule_args)
    else:
        tfds = require("tensorflow_datasets")
        (train, val, steps_per_epoch), num_classes = tfds_datasets(*pipeline, tfds, *schedule_args)
    peak = args.lr or 0.1 * args.batch_size / 256
    schedule = WarmupStepDecay(
        peak, 5 * steps_per_epoch, [e * steps_per_epoch for e in (30, 60, 90)]
    )
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    train = train.map(lambda x, y: (x, _one_hot(y, num_classes)))
    val = val.map(lambda x, y: (x, _one_hot(y, num_classes)))
    from keras_dstee import models

    with scope():
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=1e-4)
        shape = (args.image_size, args.image_size, 3)
        model = models.resnet50_imagenet(num_classes, input_shape=shape, width=args.width)
    train_and_report(model, args, train, val, optimizer, loss, None, steps_per_epoch, scope)


def _one_hot(y, num_classes):
    import tensorflow as tf

    return tf.one_hot(tf.cast(y, "int32"), num_classes)


if __name__ == "__main__":
    main()
