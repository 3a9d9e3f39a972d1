"""Train one of the paper's networks with Lipschitz and distance constraints.

    python train_main.py --flagfile=examples/cifar10.flags
    python train_main.py --flagfile=examples/demo.flags --epochs=3 --logdir=runs/demo3
    python train_main.py --helpfull

The flags are those of the reference's ``train.py``, with its defaults
(``--bs`` 256, ``--lr`` 0.003, ``--wd`` 1e-4, ``--momentum`` 0.9, ``--epochs``
100, ``--n_proj`` 1, ``--proj_freq`` 15, ...), plus ``--dataset``,
``--strategy``, ``--seed``, ``--augment`` and the schedule. Everything goes
into the run directory ``--logdir``: ``flags.txt`` (reproduces the run),
the initial and final models, ``summary.json``, TensorBoard logs, the
capacity report, and a backup from which the same command resumes after the
process is killed. The work is `keras_capacity.training.train_and_evaluate`;
the installed command ``keras-capacity-train`` is the same program.
"""

from keras_capacity.training import cli

if __name__ == "__main__":
    cli.train()
