"""The cross-encoder task: step, losses, model set-up and export, dev/test evaluation."""
