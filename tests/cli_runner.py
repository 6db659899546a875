"""Run the real ``tqsim`` entry point in-process, as the CLI tests do."""

import sys


def run_cli(args, capsys, monkeypatch):
    """``tqsim *args`` through ``tqsim.cli.main``; returns (exit code, stdout, stderr)."""
    from tqsim.cli import main

    monkeypatch.setattr(sys, "argv", ["tqsim", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
