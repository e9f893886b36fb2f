"""`python -m training.train` as torchrun starts it, plus one thing for the tests: every process writes
the heads it ends training with to `<output>/rank<N>.safetensors`, so the ranks can be compared."""

import sys

from safetensors.torch import save_file

import training.train as train_mod

evaluate = train_mod.Trainer.evaluate


def dump_then_evaluate(trainer, label: str):
    if label == "trained":
        heads = {n: p.detach().cpu().contiguous() for n, p in zip(trainer.names, trainer.params, strict=True)}
        save_file(heads, str(trainer.output / f"rank{trainer.world.rank}.safetensors"))
    return evaluate(trainer, label)


train_mod.Trainer.evaluate = dump_then_evaluate
sys.exit(train_mod.main(sys.argv[1:]))
