"""The ``surgery`` command line, as a person or a pipeline step uses it.

Commands run in process through click's runner; one end-to-end run goes
through a real subprocess from an empty folder. Every bad input gets a
non-zero exit, one line on stderr naming the culprit, and no file written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

import surgery
from surgery._cli.commands import cli
from surgery._cli.load import load_model
from surgery._cli.render import Screen
from surgery._report import site_to_dict
from surgery.demo import build_demo_model, demo_inputs

DEMO = "surgery.demo:build_demo_model"
DEMO_INPUT = "2x8:int64"


@dataclass(frozen=True)
class Files:
    """Model files shared by the tests; tests copy them before changing them."""

    folder: Path
    train_pt2: Path
    script: Path
    pickled: Path
    state_dict: Path
    safetensors: Path


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("models")
    x = demo_inputs()

    train_pt2 = folder / "demo-train.pt2"
    program = torch.export.export(build_demo_model(), (x,), strict=False)
    torch.export.save(program, str(train_pt2))

    script = folder / "demo.ts"
    # Traced in train mode: the archive keeps dropping (tracing bakes it in).
    traced = torch.jit.trace(build_demo_model(), (x,), check_trace=False)
    torch.jit.save(traced, str(script))

    pickled = folder / "demo-module.pt"
    torch.save(build_demo_model(), pickled)

    state = build_demo_model(seed=1).state_dict()
    state_dict = folder / "demo-seed1.pt"
    torch.save(state, state_dict)
    safetensors = folder / "demo-seed1.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))

    return Files(folder, train_pt2, script, pickled, state_dict, safetensors)


@pytest.fixture(scope="session")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier saved with save_pretrained (config + safetensors)."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    folder = tmp_path_factory.mktemp("bert")
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """An empty folder as the working directory."""
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def error_line(result: Result) -> str:
    """The one line a failed command printed on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("surgery"), lines[0]
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- help, version ---------------------------------------------------------


COMMANDS = ["inspect", "strip", "gate", "export", "apply", "bench", "demo"]


def test_top_help_lists_commands_examples_and_exit_codes() -> None:
    result = run("--help")

    assert result.exit_code == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout
    assert "Examples:" in result.stdout
    assert "1 verification failed, 2 usage error" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_an_example(command: str) -> None:
    result = run(command, "-h")

    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert f"surgery {command} " in result.stdout.split("Examples:")[1]


def test_bare_surgery_shows_the_help_and_an_unknown_command_one_line() -> None:
    bare = run()
    unknown = run("operate")

    assert bare.exit_code == 2
    assert bare.stderr.startswith("Usage: surgery [OPTIONS] COMMAND")
    assert unknown.exit_code == 2
    assert "No such command 'operate'" in error_line(unknown)


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("surgery, version ")


def test_without_click_the_script_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from surgery.__main__ import main

    monkeypatch.setitem(sys.modules, "click", None)

    assert main(["inspect", DEMO]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'torch-surgery[cli]'" in err


# --- inspect ---------------------------------------------------------------


def test_inspect_prints_a_table_of_every_site() -> None:
    result = run("inspect", DEMO)

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"10 dropout site(s) in {DEMO}"
    assert lines[1].split() == ["path", "kind", "class", "p", "state", "mechanism"]
    paths = [line.split()[0] for line in lines[3:]]
    assert paths == [site.path for site in surgery.find(build_demo_model())]


def test_inspect_json_is_the_sites_as_the_python_api_sees_them() -> None:
    result = run("inspect", DEMO, "--json")

    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["kind"] == "factory"
    expected = [site_to_dict(site) for site in surgery.find(build_demo_model())]
    assert payload["sites"] == expected


def test_select_and_exclude_use_the_python_grammar_and_repeat_as_a_list() -> None:
    result = run(
        "inspect",
        DEMO,
        "--select",
        "blocks.*",
        "-s",
        "embed_dropout",
        "--exclude",
        "re:.*drop_path",
        "--json",
    )

    assert result.exit_code == 0, result.stderr
    expected = surgery.find(
        build_demo_model(), ["blocks.*", "embed_dropout"], exclude=["re:.*drop_path"]
    )
    assert [s["path"] for s in json.loads(result.stdout)["sites"]] == [
        site.path for site in expected
    ]


@pytest.mark.parametrize("command", ["inspect", "strip"])
def test_an_exclude_that_matches_nothing_warns_once_in_one_line(
    command: str, files: Files, tmp_path: Path
) -> None:
    out = ["-o", tmp_path / "out.pt2"] if command == "strip" else []

    result = run(command, files.train_pt2, "--exclude", "nothing.here", *out)

    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == (
        "surgery: warning: exclude 'nothing.here' matched no dropout site; is it a "
        "typo?"
    )


def test_inspect_a_transformers_folder(bert: Path) -> None:
    import transformers

    result = run("inspect", bert, "--json")

    assert result.exit_code == 0, result.stderr
    model = transformers.BertForSequenceClassification.from_pretrained(bert)
    expected = [site_to_dict(site) for site in surgery.find(model)]
    assert json.loads(result.stdout)["sites"] == expected
    assert "Loading weights" not in result.stderr


def test_inspect_an_exported_program(files: Files) -> None:
    result = run("inspect", files.train_pt2, "--json")

    assert result.exit_code == 0, result.stderr
    program = torch.export.load(str(files.train_pt2))
    expected = surgery.find(program)
    payload = json.loads(result.stdout)
    assert payload["kind"] == "pt2"
    assert [(s["path"], s["kind"]) for s in payload["sites"]] == [
        (site.path, site.kind) for site in expected
    ]
    # Drop-path's probability is read from the keep probability its mask draws.
    assert [s["p"] for s in payload["sites"] if s["path"].endswith("drop_path")] == [
        0.05,
        0.1,
    ]


def test_inspect_lists_the_random_ops_left_in_a_graph(files: Files) -> None:
    program = run("inspect", files.train_pt2, "--json")
    script = run("inspect", files.script)

    assert program.exit_code == 0, program.stderr
    ops = json.loads(program.stdout)["random_ops"]
    assert {op["module"] for op in ops} >= {"embed_dropout", "blocks.1.drop_path"}
    assert script.exit_code == 0, script.stderr
    title = script.stdout.splitlines()[0]
    assert title.endswith(f"random op(s) in the graph of {files.script}")
    assert int(title.split()[0]) > 0


def test_a_factory_loads_a_state_dict(files: Files, work: Path) -> None:
    # The weights reach the model: the exported program computes with them.
    result = run(
        "strip", DEMO, "--weights", files.state_dict, "--input-shape", DEMO_INPUT,
        "-o", "seed1.pt2",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    x = demo_inputs()
    program = torch.export.load("seed1.pt2").module()
    torch.testing.assert_close(program(x), build_demo_model(seed=1).eval()(x))


def test_a_factory_loads_safetensors_weights(files: Files) -> None:
    loaded = load_model(DEMO, weights=files.safetensors)

    expected = build_demo_model(seed=1).state_dict()
    assert loaded.model.state_dict().keys() == expected.keys()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_pickled_module_loads_only_with_trust_pickle(files: Files) -> None:
    refused = run("inspect", files.pickled)
    assert refused.exit_code == 3
    line = error_line(refused)
    assert str(files.pickled) in line
    assert "runs whatever code" in line
    assert "--trust-pickle" in line

    trusted = run("inspect", files.pickled, "--trust-pickle", "--json")
    assert trusted.exit_code == 0, trusted.stderr
    assert len(json.loads(trusted.stdout)["sites"]) == 10


def test_a_state_dict_as_model_says_to_pass_a_factory(files: Files) -> None:
    result = run("inspect", files.state_dict)

    assert result.exit_code == 3
    line = error_line(result)
    assert "state_dict" in line
    assert "--weights" in line


def test_weights_that_do_not_fit_name_the_file(files: Files, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(3)}, wrong)

    result = run("inspect", DEMO, "--weights", wrong)

    assert result.exit_code == 3
    assert f"--weights {wrong} does not fit the model" in error_line(result)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no_such_package.models:build", "cannot import no_such_package.models"),
        ("surgery.demo:no_such_factory", "surgery.demo has no no_such_factory"),
        ("surgery.demo:demo_inputs", "returned a Tensor, not an nn.Module"),
    ],
)
def test_a_bad_factory_is_a_load_error(model: str, message: str) -> None:
    result = run("inspect", model)

    assert result.exit_code == 3
    assert message in error_line(result)


# --- strip and gate --------------------------------------------------------


def test_strip_an_exported_program_leaves_no_random_op(
    files: Files, tmp_path: Path
) -> None:
    out = tmp_path / "stripped.pt2"
    x = demo_inputs()
    assert surgery.count_random_ops(
        torch.export.load(str(files.train_pt2)).module(), x
    ).count

    result = run("strip", files.train_pt2, "-o", out)

    assert result.exit_code == 0, result.stderr
    sites = surgery.find(torch.export.load(str(files.train_pt2)))
    assert result.stdout.splitlines()[0] == (
        f"stripped {len(sites)} dropout site(s) of {files.train_pt2}"
    )
    stripped = torch.export.load(str(out)).module()
    assert surgery.count_random_ops(stripped, x).count == 0
    reference = build_demo_model().eval()
    torch.testing.assert_close(stripped(x), reference(x))
    assert listing(tmp_path) == ["stripped.pt2"]


def test_gate_an_exported_program_off_for_some_sites(
    files: Files, tmp_path: Path
) -> None:
    out = tmp_path / "gated.pt2"

    result = run(
        "gate", files.train_pt2, "--select", "blocks.*", "--mode", "off", "-o", out,
        "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    program = torch.export.load(str(files.train_pt2))
    chosen = [site.path for site in surgery.find(program, "blocks.*")]
    assert json.loads(result.stdout)["sites"] == chosen
    # The rest still drops, as the eager model with the same sites stripped.
    x = demo_inputs()
    gated = surgery.count_random_ops(torch.export.load(str(out)).module(), x)
    eager = surgery.count_random_ops(surgery.strip(build_demo_model(), "blocks.*"), x)
    assert gated.by_op() == eager.by_op()
    assert gated.count > 0


def test_overwrite_replaces_the_input(files: Files, tmp_path: Path) -> None:
    model = tmp_path / "model.pt2"
    shutil.copy(files.train_pt2, model)

    result = run("strip", model, "-o", model, "--overwrite")

    assert result.exit_code == 0, result.stderr
    program = torch.export.load(str(model))
    assert surgery.count_random_ops(program.module(), demo_inputs()).count == 0
    assert listing(tmp_path) == ["model.pt2"]


def test_verify_needs_a_python_model(files: Files, work: Path) -> None:
    Path("r.toml").write_text('[[steps]]\naction = "verify"\n')

    direct = run("strip", files.train_pt2, "--verify", "-o", "out.pt2")
    recipe = run("apply", "r.toml", files.train_pt2, "-o", "out.pt2")

    for result in (direct, recipe):
        assert result.exit_code == 2
        assert "needs a Python model" in error_line(result)
        assert "torch.export program" in error_line(result)
    assert listing(work) == ["r.toml"]


def test_torchscript_is_read_but_not_rewritten(files: Files, tmp_path: Path) -> None:
    result = run("strip", files.script, "-o", tmp_path / "out.ts")

    assert result.exit_code == 4
    assert "is TorchScript, which surgery cannot rewrite" in error_line(result)
    assert listing(tmp_path) == []


def test_a_failed_write_leaves_no_partial_file(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(program: object, path: str) -> None:
        Path(path).write_bytes(b"PK half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.export, "save", half_write)

    result = run("strip", files.train_pt2, "-o", tmp_path / "out.pt2")

    assert result.exit_code == 4
    assert "No space left on device" in error_line(result)
    assert listing(tmp_path) == []


def test_debug_shows_the_traceback(files: Files, tmp_path: Path) -> None:
    result = run("--debug", "strip", files.script, "-o", tmp_path / "o.ts")

    assert result.exit_code == 4
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("surgery strip: error:")


def test_strip_verify_report_and_export_of_a_factory_model(work: Path) -> None:
    result = run(
        "strip", DEMO, "--input-shape", DEMO_INPUT, "-o", "demo.pt2",
        "--report", "report.json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"stripped 10 dropout site(s) of {DEMO}"
    assert lines[-1].startswith("wrote demo.pt2 (torch.export program, ")
    report = json.loads(Path("report.json").read_text())
    assert report["passed"] is True
    assert {claim["name"] for claim in report["claims"]} >= {"sites", "state_dict"}
    program = torch.export.load("demo.pt2").module()
    x = demo_inputs()
    assert surgery.count_random_ops(program, x).count == 0
    torch.testing.assert_close(program(x), build_demo_model().eval()(x))
    assert listing(work) == ["demo.pt2", "report.json"]


def test_gate_off_for_some_sites_exports_the_rest_as_dropout(work: Path) -> None:
    result = run(
        "gate", DEMO, "-s", "blocks.*", "--mode", "off",
        "--input-shape", DEMO_INPUT, "-o", "gated.pt2", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["verification"] is None
    assert payload["sites"] == [
        s.path for s in surgery.find(build_demo_model(), "blocks.*")
    ]
    x = demo_inputs()
    gated = surgery.count_random_ops(torch.export.load("gated.pt2").module(), x)
    eager = surgery.count_random_ops(surgery.strip(build_demo_model(), "blocks.*"), x)
    assert gated.by_op() == eager.by_op()
    assert payload["export"]["random_ops"]


def test_gate_in_eval_mode_with_gates_on_keeps_monte_carlo_dropout(
    work: Path,
) -> None:
    result = run(
        "gate", DEMO, "--mode", "on", "--eval", "--input-shape", DEMO_INPUT,
        "-o", "mc.ts", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["export"]["training"] is False
    script = torch.jit.load("mc.ts")
    x = demo_inputs()
    assert not torch.equal(script(x), script(x))


def test_verify_and_a_new_p_cannot_go_together(work: Path) -> None:
    result = run("gate", DEMO, "--p", "0.3", "--verify", "-o", "g.pt2")

    assert result.exit_code == 2
    assert "--verify checks that every site keeps its probability" in error_line(result)
    assert listing(work) == []


SUSPICIOUS = """
from torch import nn


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        # Model code that changes course when its dropout looks optional.
        if isinstance(self.drop, nn.Identity):
            return self.lin(x) * 2
        return self.drop(self.lin(x))


def build():
    return Head()
"""


def test_a_failed_verification_exits_1_writes_the_report_and_no_model(
    work: Path,
) -> None:
    Path("suspicious.py").write_text(SUSPICIOUS)

    result = run(
        "strip", "suspicious:build", "--input-shape", "3x4", "-o", "out.pt2",
        "--report", "report.json",
    )  # fmt: skip

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "surgery strip: error: verification failed (3 claim(s)); nothing written "
        "to out.pt2"
    )
    assert "failed: outputs (train)" in result.stderr
    assert json.loads(Path("report.json").read_text())["passed"] is False
    assert listing(work) == ["report.json", "suspicious.py"]


def test_export_a_transformers_folder_with_its_own_inputs(
    bert: Path, work: Path
) -> None:
    import transformers

    result = run("export", bert, "--seq-len", "5", "-o", "bert.pt2", "--json")

    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["training"] is False
    assert len(payload["stripped"]) == 8
    assert payload["check"]["passed"] is True
    program = torch.export.load("bert.pt2")
    (ids,) = program.example_inputs[1].values()
    assert ids.shape == (2, 5)
    model = transformers.BertForSequenceClassification.from_pretrained(bert)
    torch.testing.assert_close(
        program.module()(input_ids=ids).logits, model(ids).logits
    )


def test_export_to_onnx_keeps_stdout_for_the_result(work: Path) -> None:
    result = run(
        "export", DEMO, "--input-shape", DEMO_INPUT, "-o", "demo.onnx", "--json"
    )

    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)  # the exporter's chatter went to stderr
    assert payload["format"] == "onnx"
    assert payload["random_ops"] == []
    assert listing(work) == ["demo.onnx"]


def test_example_inputs_from_a_file(work: Path) -> None:
    torch.save(demo_inputs(batch=3), "x.pt")

    result = run("export", DEMO, "--inputs", "x.pt", "-o", "demo.pt2")

    assert result.exit_code == 0, result.stderr
    (x,) = torch.export.load("demo.pt2").example_inputs[0]
    assert torch.equal(x, demo_inputs(batch=3))


RECIPE = """
inputs = ["2x8:int64"]

[[steps]]
action = "strip"
select = "blocks.*"

[[steps]]
action = "gate"
select = ["embed_dropout", "classifier_dropout"]
mode = "off"

[[steps]]
action = "verify"

[[steps]]
action = "export"
format = "pt2"
"""


def test_apply_a_recipe_as_python_does(work: Path) -> None:
    Path("serve.toml").write_text(RECIPE)

    result = run(
        "apply", "serve.toml", DEMO, "-o", "cli.pt2", "--report", "r.json", "--json"
    )

    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [step["action"] for step in payload["steps"]] == [
        "strip",
        "gate",
        "verify",
        "export",
    ]
    assert all(step["passed"] for step in payload["steps"])
    assert json.loads(Path("r.json").read_text())[0]["passed"] is True

    # The same steps from Python (all but the export) give the same model.
    steps = surgery.Recipe.from_file("serve.toml")
    in_python = surgery.Recipe(steps.steps[:2], inputs=steps.inputs)
    model = surgery.apply_recipe(build_demo_model(), in_python).model
    x = demo_inputs()
    from_cli = torch.export.load("cli.pt2").module()
    assert torch.equal(from_cli(x), model(x))
    assert surgery.count_random_ops(from_cli, x).count == 0


def test_apply_without_an_export_step_writes_by_the_output_suffix(
    work: Path,
) -> None:
    Path("strip.toml").write_text('[[steps]]\naction = "strip"\n')

    result = run(
        "apply", "strip.toml", DEMO, "--input-shape", DEMO_INPUT, "-o", "out.ts"
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "step 1: stripped 10 site(s)"
    script = torch.jit.load("out.ts")
    x = demo_inputs()
    assert torch.equal(script(x), script(x))


def test_a_bad_recipe_is_a_usage_error_naming_file_and_step(work: Path) -> None:
    Path("bad.toml").write_text('[[steps]]\naction = "strip"\nslect = "a"\n')

    result = run("apply", "bad.toml", DEMO, "-o", "out.pt2")

    assert result.exit_code == 2
    assert "bad.toml, step 1: unknown key 'slect'" in error_line(result)
    assert listing(work) == ["bad.toml"]


def test_a_recipe_whose_verify_fails_writes_nothing(work: Path) -> None:
    Path("suspicious.py").write_text(SUSPICIOUS)
    Path("r.toml").write_text(
        '[[steps]]\naction = "strip"\n[[steps]]\naction = "verify"\n'
        '[[steps]]\naction = "export"\nformat = "pt2"\n'
    )

    result = run(
        "apply", "r.toml", "suspicious:build", "--input-shape", "3x4", "-o", "o.pt2"
    )

    assert result.exit_code == 1
    assert "nothing written to o.pt2" in result.stderr
    assert listing(work) == ["r.toml", "suspicious.py"]


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    result = run("demo", "--seconds", "0.05", "--keep", tmp_path, "--json")

    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sites"] == 10
    assert summary["random_ops_before"] > 0
    assert summary["random_ops_after"] == 0
    assert summary["deterministic_after"] is True
    assert summary["gate_same_draws"] is True
    assert summary["claims_passed"] == summary["claims"]
    assert summary["export_random_ops"] == 0
    assert summary["export_matches_eager"] is True
    program = torch.export.load(str(tmp_path / "demo.pt2")).module()
    assert surgery.count_random_ops(program, demo_inputs()).count == 0


# --- bad inputs: non-zero exit, one line naming the culprit, nothing written -


def test_missing_model_file(work: Path) -> None:
    result = run("strip", "missing.pt2", "-o", "out.pt2")

    assert result.exit_code == 3
    assert "MODEL missing.pt2: no such file or folder" in error_line(result)
    assert listing(work) == []


def test_corrupt_model_file(work: Path) -> None:
    (work / "corrupt.pt2").write_bytes(b"\x00not a model at all")

    result = run("strip", "corrupt.pt2", "-o", "out.pt2")

    assert result.exit_code == 3
    assert "MODEL corrupt.pt2 is neither" in error_line(result)
    assert listing(work) == ["corrupt.pt2"]


def test_truncated_model_archive(files: Files, work: Path) -> None:
    data = files.train_pt2.read_bytes()
    (work / "cut.pt2").write_bytes(data[: len(data) // 2])

    result = run("strip", "cut.pt2", "-o", "out.pt2")

    assert result.exit_code == 3
    assert "cut.pt2" in error_line(result)
    assert listing(work) == ["cut.pt2"]


def test_pickle_without_opt_in(files: Files, work: Path) -> None:
    result = run("strip", files.pickled, "--input-shape", DEMO_INPUT, "-o", "o.pt2")

    assert result.exit_code == 3
    assert "--trust-pickle" in error_line(result)
    assert listing(work) == []


def test_selector_that_matches_nothing(files: Files, work: Path) -> None:
    result = run("strip", files.train_pt2, "--select", "decoder.*", "-o", "out.pt2")

    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("surgery strip: error: --select 'decoder.*' matched none")
    assert listing(work) == []


def test_output_equal_to_input(files: Files, work: Path) -> None:
    shutil.copy(files.train_pt2, "model.pt2")
    before = Path("model.pt2").read_bytes()

    result = run("strip", "model.pt2", "-o", "./model.pt2")

    assert result.exit_code == 2
    line = error_line(result)
    assert "-o/--output model.pt2 is the input model.pt2" in line
    assert "--overwrite" in line
    assert Path("model.pt2").read_bytes() == before
    assert listing(work) == ["model.pt2"]


def test_unwritable_output(files: Files, work: Path) -> None:
    Path("a-file").write_text("")

    result = run("strip", files.train_pt2, "-o", "a-file/out.pt2")

    assert result.exit_code == 2
    assert "a-file/out.pt2" in error_line(result)
    assert listing(work) == ["a-file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_output_in_a_read_only_folder(files: Files, work: Path) -> None:
    Path("locked").mkdir(mode=0o555)

    result = run("strip", files.train_pt2, "-o", "locked/out.pt2")

    assert result.exit_code == 2
    assert "no permission to write in" in error_line(result)
    assert listing(work / "locked") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "Invalid value for '--format': 'tflite'"),
        ([], "cannot tell the format from .bin"),
    ],
)
def test_unknown_format(
    files: Files, work: Path, args: list[str], message: str
) -> None:
    result = run("strip", files.train_pt2, "-o", "out.bin", *args)

    assert result.exit_code == 2
    assert message in error_line(result)
    assert listing(work) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-shape", "2x8:int65"], "--input-shape: input shape '2x8:int65'"),
        (["--input-shape", "two"], "--input-shape: input shape 'two'"),
        (["--inputs", "none.pt"], "--inputs none.pt: no such file"),
        (["--mode", "sometimes"], "Invalid value for '--mode'"),
        (["--p", "1.5"], "Invalid value for '--p'"),
        (["--bogus"], "No such option '--bogus'"),
        (["--report", "out.pt2"], "--report out.pt2 is the -o file"),
    ],
)
def test_bad_flags_are_usage_errors(work: Path, args: list[str], message: str) -> None:
    result = run("gate", DEMO, "-o", "out.pt2", *args)

    assert result.exit_code == 2
    assert message in error_line(result)
    assert listing(work) == []


# --- bench -----------------------------------------------------------------


def test_bench_reports_the_variants_asked_for() -> None:
    result = run(
        "bench", DEMO, "--input-shape", "4x8:int64", "--seconds", "0.05",
        "--rounds", "1", "--variant", "train", "--variant", "strip", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    rows = {row["variant"]: row for row in json.loads(result.stdout)["rows"]}
    assert set(rows) == {"train", "eval", "strip"}
    assert rows["strip"]["random_ops"] == 0
    assert rows["train"]["random_ops"] > 0


def test_bench_refuses_a_model_with_a_frozen_mode(files: Files) -> None:
    result = run("bench", files.train_pt2)

    assert result.exit_code == 2
    assert "bench needs a Python model" in error_line(result)


# --- the terminal ----------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_rich_table_and_a_pipe_plain_text() -> None:
    rows = [("blocks.0.mlp.2", "module")]
    terminal, pipe = _Terminal(), io.StringIO()

    Screen(out=terminal, err=io.StringIO()).table(("path", "kind"), rows)
    Screen(out=pipe, err=io.StringIO()).table(("path", "kind"), rows)

    assert "┃" in terminal.getvalue()
    assert "blocks.0.mlp.2" in terminal.getvalue()
    assert (
        pipe.getvalue()
        == "path            kind\n--------------  ------\nblocks.0.mlp.2  module\n"
    )


# --- end to end ------------------------------------------------------------


def test_end_to_end_in_a_subprocess_from_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text(RECIPE)
    command = [
        sys.executable, "-m", "surgery", "apply", "serve.toml", DEMO,
        "-o", "demo.pt2", "--report", "report.json", "--json",
    ]  # fmt: skip

    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["output"] == "demo.pt2"
    assert listing(tmp_path) == ["demo.pt2", "report.json", "serve.toml"]
    program = torch.export.load(str(tmp_path / "demo.pt2")).module()
    assert surgery.count_random_ops(program, demo_inputs()).count == 0
