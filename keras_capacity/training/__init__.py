"""The training program as a library: data, optimizers, run directories, callbacks, the report."""
