"""Training machinery shared by the deep-learning methods (see :mod:`nmai.training.loop`)."""

from .loop import TrainState, card_training, lr_factor, seed_everything, supervised_step, train  # noqa: F401
