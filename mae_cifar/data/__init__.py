"""Datasets as uint8 tensors on the device, the batched loader and batched augmentation."""
