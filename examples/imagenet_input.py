"""The ImageNet input pipeline of the papers, in `tf.data`.

Training: a random crop covering 8-100% of the image's area with an aspect
ratio in [3/4, 4/3], resized to `size` x `size`, and a random horizontal flip
(the "Inception" crop: Szegedy et al., 2015; used by He et al., 2016, Goyal
et al., 2017 and RigL's ImageNet code, Evci et al., 2020). Evaluation: the
shorter side resized to `size * 256 / 224` (256 for 224) and the central
`size` x `size` crop. Both normalise with the ImageNet mean and standard
deviation. Decoding and augmentation run in parallel in the pipeline, which
prefetches, so the accelerators are not starved.
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


def train_image(tf, image, size, seed=None):
    """The training augmentation of one decoded uint8 image (H, W, 3)."""
    shape = tf.shape(image)
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=whole,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RANGE,
        area_range=AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed or 0,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method="bilinear")
    image = tf.image.random_flip_left_right(image, seed=seed)
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


def folder_datasets(root, size, batch_size, seed):
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

    train = tf.data.Dataset.from_tensor_slices((train_paths, train_labels)).shuffle(len(train_paths), seed=seed)
    val = tf.data.Dataset.from_tensor_slices((val_paths, val_labels))
    train = train.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    val = val.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return pipelines(train, val, size, batch_size, seed), len(classes)


def tfds_datasets(size, batch_size, seed, tfds):
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
    return pipelines(train.shuffle(10_000, seed=seed), val, size, batch_size, seed), info.features["label"].num_classes


def pipelines(train, val, size, batch_size, seed):
    """Batched, augmented, prefetched pipelines from (uint8 image, label)
    datasets of images of any size."""
    import tensorflow as tf

    train = (
        train.map(lambda x, y: (train_image(tf, x, size, seed), y), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = (
        val.map(lambda x, y: (eval_image(tf, x, size), y), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return train, val
