"""Tracking: person keypoints and mask, then a batched body-model fit."""
