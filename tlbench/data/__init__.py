"""The data layer: read mini-ImageNet in any layout, decode it once, feed batches fast.

Where data enters: `formats` (read) -> `cache` (decode once) -> `dataset` (split, classes) ->
`loader` (batches) -> `augment` (Keras augmentation, batched).
"""
