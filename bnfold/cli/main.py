"""The ``bnfold`` entry point: a group whose default command is ``fold``.

``bnfold model.onnx`` folds; ``bnfold verify|check|bench …`` run the other commands.
Commands are imported lazily so ``bnfold --help`` stays fast and imports neither
torch nor onnxruntime.
"""

from __future__ import annotations

import importlib
import sys

import click

from bnfold import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "fold": ("bnfold.cli.fold_cmd", "fold"),
    "verify": ("bnfold.cli.verify_cmd", "verify"),
    "check": ("bnfold.cli.check_cmd", "check"),
    "bench": ("bnfold.cli.bench_cmd", "bench"),
}
DEFAULT_COMMAND = "fold"


class DefaultToFoldGroup(click.Group):
    """A click group that loads commands lazily and treats unknown words as model paths."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a partial install: hide, don't crash
            if err.name != module_name:
                raise
            return None
        return getattr(module, attr)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in COMMANDS:
            args = [DEFAULT_COMMAND, *args]
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `bnfold -o out.onnx model.onnx` must reach the fold command too.
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h", "--version"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=DefaultToFoldGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    invoke_without_command=False,
)
@click.version_option(__version__, prog_name="bnfold")
def cli() -> None:
    """Fold BatchNorm into neighbouring layers and strip Dropout — exactly, and proven.

    \b
    Common uses:
      bnfold model.onnx                 fold, verify in onnxruntime, write model.folded.onnx
      bnfold model.onnx -o out.onnx     choose the output path
      bnfold models/ -j 4               fold every model in a folder, 4 at a time
      bnfold check model.onnx           CI gate: exit 1 if anything is still foldable
      bnfold verify ref.onnx cand.onnx  compare two models in onnxruntime
      bnfold bench model.onnx --vs folded.onnx   latency, interleaved A/B

    Exit codes: 0 done, 1 not equivalent (or check found foldable nodes),
    2 bad input or usage. Run `bnfold COMMAND --help` for each command's options.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="bnfold")
