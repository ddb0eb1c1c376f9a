"""The ``surgery`` group: global options, help, and the commands it holds."""

from __future__ import annotations

import click

from .app import SurgeryGroup
from .exporting import apply, export
from .inspecting import bench, demo, inspect
from .rewriting import gate, strip

__all__ = ["cli"]


@click.group(
    name="surgery",
    cls=SurgeryGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  surgery demo
  surgery inspect surgery.demo:build_demo_model
  surgery strip model.pt2 -o model.stripped.pt2
  surgery gate mypkg.nets:build --weights w.safetensors \\
      --select 'encoder.*' --mode off -o gated.onnx --input-shape 2x128:int64
  surgery apply recipe.toml ./bert-folder -o bert.onnx

\b
Exit codes: 0 success, 1 verification failed, 2 usage error,
3 MODEL could not be loaded, 4 any other failure.
""",
)
@click.version_option(package_name="torch-surgery", prog_name="surgery")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
def cli(debug: bool) -> None:
    """Find, gate, strip and restore every dropout site in a PyTorch model."""


for command in (inspect, strip, gate, export, apply, bench, demo):
    cli.add_command(command)
