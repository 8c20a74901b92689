"""`port-model` on the command line.

`port-model SRC` ports one repo (the default command, `port`); other commands are named
first (`port-model check REPO`). Exit codes: 0 ported and verified (or nothing to do);
1 verification failed, or with `--check` the repo needs porting; 2 bad input, usage error
or an unsupported pattern. `check` exits 0 when every contract item that applies passes,
1 when one fails, 2 when it cannot run.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from porter.errors import PortError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
REFERENCE_CHOICES = ("own", "current", "own-or-current")  # porter.verify.reference; not imported: it loads torch


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
@click.argument("src", type=click.Path(path_type=Path), metavar="SRC")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output folder (default: SRC-ported beside SRC).")
@click.option("--diff", "show_diff", is_flag=True, help="Print the unified diff of the code changes; write nothing.")
@click.option("--check", "check", is_flag=True, help="Exit 1 if the repo needs porting; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip running the legacy and ported models.")
@click.option("--no-sharded-proof", is_flag=True, help="Skip running the parallel plan over 2 processes (D2).")
@click.option("--replicate-fused-qkv", is_flag=True,
              help="Keep a concatenated [q|k|v] projection fused and replicated instead of splitting it.")
@click.option("--reference-transformers", metavar="VER", help="transformers release to run the legacy code with.")
@click.option("--reference", "reference", type=click.Choice(REFERENCE_CHOICES), default="own", show_default=True,
              help="Run the legacy code in its own release, under the installed transformers with compatibility "
                   "shims (current, a weaker reference), or in its own release and else with shims.")
@click.option("--allow-partial", is_flag=True, help="Write output even where some code was not understood.")
@click.option("--max-shard-size", default="5GB", show_default=True, callback=_shard_size, help="Largest safetensors shard.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--push", is_flag=True, help="Open a pull request with the port on the Hub repo SRC.")
@click.option("--force", is_flag=True, help="With --push: push even when not verified, marked unverified.")
@click.option("-v", "--verbose", is_flag=True, help="Show every transform applied.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the final status.")
def port_command(src, out, show_diff, check, as_json, device, no_verify, replicate_fused_qkv, reference_transformers,
                 reference, no_sharded_proof, allow_partial, max_shard_size, overwrite, push, force, verbose, quiet):
    """Port the legacy Hugging Face model repo SRC to transformers 5 and verify it.

    SRC is a folder, or a Hub repo id `org/name[@revision]` (a folder that exists wins).
    """
    import porter
    from porter.pipeline import check_only

    # SIGTERM unwinds like Ctrl-C, so the half-built output folder is removed.
    signal.signal(signal.SIGTERM, _terminate)

    progress = _Progress(quiet or as_json, verbose)
    if push and (show_diff or check):
        raise click.UsageError("--push writes a port; it cannot be combined with --diff or --check")
    if force and not push:
        raise click.UsageError("--force only applies to --push")
    try:
        if show_diff or check:
            result = check_only(src, allow_partial, replicate_fused_qkv)
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
            replicate_fused_qkv=replicate_fused_qkv,
            device=device,
            reference_transformers=reference_transformers,
            reference=reference,
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
        weaker = " against a weaker reference" if report.verified and report.reference.get("weaker") else ""
        click.echo(f"{report.status}{' and verified' if report.verified else ''}{weaker}: {result.output}")
    if push:
        _push(result, force, progress, as_json)
    if report.failed or report.status == "partial":
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)


def _push(result, force: bool, progress, as_json: bool) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    from porter.hub import push

    try:
        pull_request = push(result, force=force, progress=progress)
    except PortError as exc:
        click.echo(f"port-model: {exc.render()}", err=True)
        sys.exit(exc.exit_code)
    except HfHubHTTPError as exc:
        click.echo(f"port-model: error: push failed: {str(exc).splitlines()[0]}", err=True)
        sys.exit(EXIT_FAILED)
    what = "reused open pull request" if pull_request.reused else "opened pull request"
    click.echo(f"{what}: {pull_request.url}", err=as_json)  # stdout stays pure JSON with --json


@main.command("batch", context_settings=CONTEXT)
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--search", metavar="QUERY", help="Port the model repos a Hub search finds instead of FILE.")
@click.option("--filter", "filters", multiple=True, metavar="TAG", help="With --search: only repos with TAG.")
@click.option("--limit", type=int, help="With --search: at most this many repos.")
@click.option("-j", "--jobs", default=1, show_default=True, help="Repos ported at the same time.")
@click.option("--time-limit", default=3600.0, show_default=True, help="Seconds one repo may take.")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("ported"), show_default=True,
              help="Ported repos, the state file and the result tables go here.")
@click.option("--state", type=click.Path(path_type=Path), help="State file (default: OUT_DIR/batch.sqlite).")
@click.option("--push", is_flag=True, help="Open a pull request for each verified port.")
@click.option("--force", is_flag=True, help="With --push: push unverified ports too, marked unverified.")
@click.option("--no-verify", is_flag=True, help="Skip running the legacy and ported models.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--reference-transformers", metavar="VER", help="transformers release to run the legacy code with.")
@click.option("--reference", "reference", type=click.Choice(REFERENCE_CHOICES), default="own", show_default=True,
              help="Where the legacy code runs, as for `port`.")
@click.option("--retry-failed", is_flag=True, help="Also redo repos that failed in an earlier run.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", metavar="ADDRESS", help="Ray cluster to join (default: RAY_ADDRESS or a local one).")
def batch_command(file, search, filters, limit, jobs, time_limit, out_dir, state, push, force, no_verify, device,
                  reference_transformers, reference, retry_failed, executor, ray_address):
    """Port many Hub repos: one repo id per line of FILE, or those `--search QUERY` finds.

    Interrupted batches resume from the state file; results go to OUT_DIR/batch.csv and batch.json.
    """
    from porter.batch import BatchOptions, read_repo_list, run_batch, search_repos, summary

    signal.signal(signal.SIGTERM, _terminate)
    if (file is None) == (search is None):
        raise click.UsageError("give either FILE or --search QUERY")
    progress = _Progress(False, False)
    options = BatchOptions(out_dir=out_dir, state=state, jobs=jobs, time_limit=time_limit, verify=not no_verify,
                           push=push, force=force, device=device, reference_transformers=reference_transformers,
                           reference=reference, retry_failed=retry_failed, executor=executor, ray_address=ray_address)
    try:
        repos = read_repo_list(file) if file else search_repos(search, filters, limit, progress)
        rows = run_batch(repos, options)
    except PortError as exc:
        click.echo(f"port-model: error: {exc.render()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("port-model: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    click.echo(summary(rows))
    click.echo(f"tables: {out_dir / 'batch.csv'} and {out_dir / 'batch.json'}")
    sys.exit(EXIT_FAILED if any(row["failed"] for row in rows) else EXIT_OK)


@main.command("check", context_settings=CONTEXT)
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
@click.option("--no-run", is_flag=True, help="Read the code only; do not run the model.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Print only failing checks and the final line.")
def check_command(repo, as_json, no_run, device, quiet):
    """Check REPO (legacy, ported or modern) against the engine contract, items A to E.

    Exit 0 when every item that applies passes, 1 when one fails, 2 when the check cannot run.
    """
    from porter.contract_check import check_contract

    progress = _Progress(quiet or as_json, False)
    try:
        result = check_contract(repo, run=not no_run, device=device, progress=progress)
    except PortError as exc:
        click.echo(f"port-model: error: {exc.render()}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(result.to_json(), nl=False)
    else:
        table = result.table()
        if quiet:
            table = "\n".join(line for line in table.splitlines() if line[6:10] == "FAIL")
        if table:
            click.echo(table)
        verdict = "meets the engine contract" if result.passed else "does not meet the engine contract"
        hint = f"; `port-model {repo}` fixes the failures marked fix" if any(c.fixable for c in result.checks) else ""
        click.echo(f"{repo}: {verdict}{hint}")
    sys.exit(EXIT_OK if result.passed else EXIT_FAILED)


if __name__ == "__main__":
    main()
