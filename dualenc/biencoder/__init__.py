"""The bi-encoder task: step, losses (MNRL, margins, distillation), GradCache, model set-up."""
