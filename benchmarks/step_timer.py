"""The benchmarks' shared Keras callback for step times."""

import time

import keras


class StepTimer(keras.callbacks.Callback):
    """Collects the wall time of every training step, across ``fit`` calls
    (the input is read inside the step, so its cost is included)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if keras.backend.backend() == "torch":  # PyTorch's GPU kernels run asynchronously
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)
