"""The TSDAE task: denoising auto-encoder adaptation of a sentence encoder."""
