"""The ImageNet input pipeline of the papers, in `tf.data`.

Training: a random crop covering 8-100% of the image's area with an aspect
ratio in [3/4, 4/3], resized to `size` x `size`, and a random horizontal flip
(the "Inception" crop: Szegedy et al., 2015; used by He et al., 2016, Goyal
et al., 2017 and RigL's ImageNet code, Evci et al., 2020). Evaluation: the
shorter side resized to `size * 256 / 224` (256 for 224) and the central
`size` x `size` crop. Both normalise with the ImageNet mean and standard
deviation. Decoding and augmentation run in parallel in the pipeline, which
prefetches, so the accelerators are not starved. Epoch `e`'s order and crops
depend only on `(seed, e)` (stateless random ops), and the pipeline starts at
the epoch a resumed run continues from, so it sees the batches an
uninterrupted run would.
"""

import os

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Inception crop: area fraction and aspect-ratio ranges.
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")


def _normalise(tf, image):
    return (tf.cast(image, "float32") / 255.0 - MEAN) / STD


def train_image(tf, image, size, key):
    """The training augmentation of one decoded uint8 image (H, W, 3);
    `key`: two int64 numbers seeding its crop and flip."""
    shape = tf.shape(image)
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=whole,
        seed=key,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RANGE,
        area_range=AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, seed=key + 1)
    return _normalise(tf, image)


def eval_image(tf, image, size):
    """Shorter side to `size * 256 / 224`, then the central `size` crop."""
    shape = tf.cast(tf.shape(image)[:2], "float32")
    scale = (size * 256 / 224) / tf.reduce_min(shape)
    resized = tf.cast(tf.round(shape * scale), "int32")
    image = tf.image.resize(image, resized, method="bilinear")
    top = (resized[0] - size) // 2
    left = (resized[1] - size) // 2
    return _normalise(tf, image[top : top + size, left : left + size])


def _files(root):
    """(paths, labels, class names) of a folder of class folders."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(folder, file))
                labels.append(label)
    return paths, labels, classes


def folder_datasets(root, size, batch_size, seed, epochs, start_epoch, steps=None, replicas=1):
    """Train/val pipelines from `root/train` and `root/val` class folders, or
    from one folder of class folders split 90/10; and the number of classes."""
    import numpy as np
    import tensorflow as tf

    if not os.path.isdir(root):
        raise SystemExit(f"--data: no such folder: {root}")
    if os.path.isdir(os.path.join(root, "train")):
        train_paths, train_labels, classes = _files(os.path.join(root, "train"))
        val_paths, val_labels, _ = _files(os.path.join(root, "val"))
    else:
        paths, labels, classes = _files(root)
        order = np.random.default_rng(seed).permutation(len(paths))
        cut = int(0.9 * len(paths))
        train_paths, train_labels = [paths[i] for i in order[:cut]], [labels[i] for i in order[:cut]]
        val_paths, val_labels = [paths[i] for i in order[cut:]], [labels[i] for i in order[cut:]]
    if not train_paths:
        raise SystemExit(f"--data: no images found under {root}")

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image, label

    files = tf.data.Dataset.from_tensor_slices((train_paths, train_labels))
    val = tf.data.Dataset.from_tensor_slices((val_paths, val_labels)).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Decoding follows the shuffle of the (cheap) file names.
    pipes = pipelines(files, val, size, batch_size, seed, epochs, start_epoch, steps, len(train_paths), decode, replicas)
    return pipes, len(classes)


def tfds_datasets(size, batch_size, seed, tfds, epochs, start_epoch, steps=None, replicas=1):
    """Train/val pipelines from tensorflow-datasets' `imagenet2012` (prepared
    locally: tfds never downloads ImageNet itself)."""
    try:
        (train, val), info = tfds.load(
            "imagenet2012", split=["train", "validation"], as_supervised=True, with_info=True, download=False
        )
    except Exception as error:  # noqa: BLE001
        raise SystemExit(
            "ImageNet is not prepared for tensorflow-datasets (it needs the manual download) and "
            f"no --data folder was given.\n{error}"
        ) from None
    pipes = pipelines(train, val, size, batch_size, seed, epochs, start_epoch, steps, 10_000, None, replicas)
    return pipes, info.features["label"].num_classes


def pipelines(train, val, size, batch_size, seed, epochs, start_epoch, steps, buffer, decode=None, replicas=1):
    """Batched, augmented, prefetched pipelines from (uint8 image, label)
    datasets of images of any size (or of files, with `decode`). The
    training pipeline holds epochs `start_epoch` to `epochs - 1` of `steps`
    batches each (default: all full batches), shuffled with a `buffer`.
    Over several `replicas` the validation pipeline drops its last partial
    batch too: one smaller than the replica count leaves a replica empty,
    which `MirroredStrategy` cannot sum (TF's own ImageNet recipes drop it).

    Returns `(train, val, steps)`."""
    import tensorflow as tf

    steps = steps or int(train.cardinality()) // batch_size

    def epoch_data(epoch):
        # A Python seed per epoch: tf.data's shuffle takes no tensor seed.
        data = train.shuffle(buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
        if decode is not None:
            data = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        keyed = lambda i, xy: (train_image(tf, xy[0], size, tf.stack([tf.constant(seed * 1_000_003 + epoch, "int64"), i])), xy[1])  # noqa: E731
        return data.enumerate().map(keyed, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=True).take(steps)

    batches = epoch_data(start_epoch)
    for epoch in range(start_epoch + 1, epochs):
        batches = batches.concatenate(epoch_data(epoch))
    val = (
        val.map(lambda x, y: (eval_image(tf, x, size), y), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=replicas > 1)
        .prefetch(tf.data.AUTOTUNE)
    )
    return batches.prefetch(tf.data.AUTOTUNE), val, steps
