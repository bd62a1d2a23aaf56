import subprocess
import sys

import r1lab
from r1lab.cli import COMMANDS


def r1(*args, **kw):
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True, text=True, timeout=300, **kw)


def test_help_lists_every_command():
    out = r1("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_init_writes_a_loadable_checkpoint(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("What is 12 + 34? The answer is 46.\n" * 50)
    out = r1("init", "--preset", "cpu-tiny", "--out", str(tmp_path / "ck"), "--text", str(text), "num_hidden_layers=2")
    assert out.returncode == 0, out.stderr
    model, tok = r1lab.load(tmp_path / "ck")
    assert model.config.num_hidden_layers == 2
    assert tok.decode(tok.encode("What is 12 + 34?")) == "What is 12 + 34?"


def test_bad_override_is_a_clear_error(tmp_path):
    out = r1("init", "--out", str(tmp_path / "x"), "no_such_key=1")
    assert out.returncode == 2
    assert "unknown config key" in out.stderr and "Traceback" not in out.stderr
