"""First contact: errors that need no model come at once, before torch loads, and say what to do instead."""

import json
import subprocess
import sys

SCRIPT = ("import sys\nfrom perfusion_cli.cli.main import main\nsys.argv = ['perfusion', *sys.argv[1:]]\n"
          "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
          "print('TORCH:', 'torch' in sys.modules, 'CODE:', code)\n")


def _perfusion(*args):
    result = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
                            timeout=120)
    return result, " ".join((result.stdout + result.stderr).split())


def test_an_unknown_merchant_is_one_line_naming_known_ids_before_torch_loads(trained_workspace, tmp_path):
    result, text = _perfusion("--workdir", trained_workspace, "generate", "--merchant", "99999", "linen dress",
                              "--out", tmp_path / "o")
    assert "TORCH: False CODE: 1" in text and "Traceback" not in text, text
    assert ("unknown merchant '99999': it is not in the prepared data" in text and "which holds 8 merchant(s): "
            in text and "for a new merchant pass --cold-start mean" in text), text
    known = text.split("merchant(s): ")[1].split(" —")[0].replace(", …", "").split(", ")
    table = {json.loads(line)["merchant_id"] for line in
             (trained_workspace / "data" / "merchant_table.jsonl").read_text().splitlines()}
    assert known and set(known) <= table  # the ids it names exist
    assert not (tmp_path / "o").exists()


def test_bad_requests_and_seeds_fail_before_torch_loads(trained_workspace, tmp_path):
    (tmp_path / "r.jsonl").write_text('{"merchant": "102", "prompt": "x"}\n{"merchant": "nobody", "prompt": "x"}\n')
    for args, message in (
            (["--requests", tmp_path / "r.jsonl"], "unknown merchant 'nobody'"),
            (["--merchant", "102", "x", "--seed", 4294967295, "--n", 2], "seed must be in 0..4294967294"),
            (["--merchant", "\x1b[31mred", "x"], "field 'merchant' holds a control character")):
        result, text = _perfusion("--workdir", trained_workspace, "generate", *args, "--out", tmp_path / "o")
        assert "TORCH: False CODE: 1" in text and message in text and "Traceback" not in text, text
        assert "\x1b" not in result.stdout + result.stderr  # no escape reaches the terminal


def test_no_prepared_data_says_which_command_makes_it_before_torch_loads(tmp_path):
    for command in (["generate", "--merchant", "123", "linen dress"], ["train-gen"], ["train-rm"], ["eval", "rm"],
                    ["eval", "gen"], ["serve"], ["bench"]):
        result, text = _perfusion("--workdir", tmp_path, *command)
        assert "TORCH: False CODE: 1" in text and "run `perfusion prepare LOGS_DIR`" in text, text
