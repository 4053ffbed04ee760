"""``python -m service``: the command line of the torch-free serving image too."""

import subprocess
import sys


def test_the_command_line_imports_no_torch():
    """Every subcommand registers without torch: the serving image has none."""
    probe = ("import sys, service.cli; service.cli.build_parser(); "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"
