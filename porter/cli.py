"""`port-model` on the command line.

`port-model SRC` ports one repo (the default command, `port`); other commands are named
first (`port-model check REPO`). Exit codes: 0 ported and verified (or nothing to do);
1 verification failed, or with `--check` the repo needs porting; 2 bad input, usage error
or an unsupported pattern.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from porter.errors import PortError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Progress:
    """Step messages on stderr with elapsed time; silent with -q."""

    def __init__(self, quiet: bool, verbose: bool):
        self.quiet = quiet
        self.verbose = verbose
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        click.echo(f"[{elapsed:6.1f}s] {message}", err=True)


def _shard_size(ctx, param, value):
    from porter.weights import parse_shard_size

    try:
        parse_shard_size(value)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _terminate(signum, frame):
    raise KeyboardInterrupt


class _DefaultToPort(click.Group):
    """A group whose first argument, unless it names a command, belongs to `port`.

    Keeps `port-model SRC [options]` working beside `port-model COMMAND ...`.
    """

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["port", *args]
        return super().parse_args(ctx, args)


CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=_DefaultToPort, context_settings=CONTEXT)
def main():
    """Port legacy Hugging Face model repos to transformers 5 and inference engines, with proof.

    `port-model SRC` is short for `port-model port SRC`.
    """


@main.command("port", context_settings=CONTEXT)
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output folder (default: SRC-ported beside SRC).")
@click.option("--diff", "show_diff", is_flag=True, help="Print the unified diff of the code changes; write nothing.")
@click.option("--check", "check", is_flag=True, help="Exit 1 if the repo needs porting; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip running the legacy and ported models.")
@click.option("--no-sharded-proof", is_flag=True, help="Skip running the parallel plan over 2 processes (D2).")
@click.option("--reference-transformers", metavar="VER", help="transformers release to run the legacy code with.")
@click.option("--allow-partial", is_flag=True, help="Write output even where some code was not understood.")
@click.option("--max-shard-size", default="5GB", show_default=True, callback=_shard_size, help="Largest safetensors shard.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("-v", "--verbose", is_flag=True, help="Show every transform applied.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the final status.")
def port_command(src, out, show_diff, check, as_json, device, no_verify, no_sharded_proof, reference_transformers,
                 allow_partial, max_shard_size, overwrite, verbose, quiet):
    """Port the legacy Hugging Face model repo SRC to transformers 5 and verify it."""
    import porter
    from porter.pipeline import check_only

    # SIGTERM unwinds like Ctrl-C, so the half-built output folder is removed.
    signal.signal(signal.SIGTERM, _terminate)

    progress = _Progress(quiet or as_json, verbose)
    try:
        if show_diff or check:
            result = check_only(src, allow_partial)
            if show_diff:
                click.echo(result.diff, nl=False)
            if as_json:
                click.echo(result.report.to_json(), nl=False)
            elif check and not quiet:
                click.echo(f"{src}: {result.report.status} ({len(result.changes)} change(s))")
            if check and result.report.status == "needs-porting":
                sys.exit(EXIT_FAILED)
            sys.exit(EXIT_OK)
        result = porter.port(
            src,
            out,
            verify=not no_verify,
            sharded_proof=not no_sharded_proof,
            device=device,
            reference_transformers=reference_transformers,
            allow_partial=allow_partial,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            progress=progress,
        )
    except PortError as exc:
        click.echo(f"port-model: error: {exc.render()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("port-model: interrupted; nothing was written", err=True)
        sys.exit(130)

    report = result.report
    if as_json:
        click.echo(report.to_json(), nl=False)
    else:
        if verbose:
            for change in report.transforms:
                click.echo(f"  {change['transform']:<20} {change['file']}:{change['line']}  {change['message']}")
        if not quiet:
            click.echo(report.summary_table())
        else:
            for check in report.failed:  # failures are never silenced
                click.echo(f"FAIL {check.item} {check.name}: {check.detail or check.figures}")
        click.echo(f"{report.status}{' and verified' if report.verified else ''}: {result.output}")
    if report.failed or report.status == "partial":
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
