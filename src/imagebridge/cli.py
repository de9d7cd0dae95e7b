"""The one ``imagebridge`` command: ``demo``, ``ehr …``, ``imaging …``.

Settings come from ``IMAGEBRIDGE_*`` environment variables or a TOML file (``--config`` or
``IMAGEBRIDGE_CONFIG``); see docs/configuration.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagebridge.common import settings as settings_mod
from imagebridge.common.server import serve
from imagebridge.common.settings import EhrSettings, ImagingSettings

if TYPE_CHECKING:
    from imagebridge.ehr.admin import Admin


def _ehr_settings(args: argparse.Namespace) -> EhrSettings:
    return settings_mod.load(
        EhrSettings,
        "ehr",
        config_file=args.config,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        audit_fsync=getattr(args, "audit_fsync", None),
    )


def _imaging_settings(args: argparse.Namespace) -> ImagingSettings:
    return settings_mod.load(
        ImagingSettings,
        "imaging",
        config_file=args.config,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        upstream_url=getattr(args, "upstream", None),
        upstream_auth=getattr(args, "upstream_auth", None),
        upstream_ca_file=getattr(args, "upstream_ca_file", None),
        audit_fsync=getattr(args, "audit_fsync", None),
    )


def _export(section: str, args: argparse.Namespace) -> None:
    """Hand command-line settings to worker processes, which read the environment."""
    if args.config is not None:
        os.environ["IMAGEBRIDGE_CONFIG"] = str(args.config)
    for name, setting in (
        ("host", "host"),
        ("port", "port"),
        ("upstream", "upstream_url"),
        ("upstream_auth", "upstream_auth"),
        ("upstream_ca_file", "upstream_ca_file"),
        ("audit_fsync", "audit_fsync"),
    ):
        if getattr(args, name, None) is not None:
            os.environ[f"IMAGEBRIDGE_{section.upper()}_{setting.upper()}"] = str(getattr(args, name))


def _serve(section: str, args: argparse.Namespace) -> int:
    """Migrate the service's database, then serve it (``--workers`` > 1 re-creates it per worker)."""
    module = importlib.import_module(f"imagebridge.{section}.app")
    settings = _ehr_settings(args) if section == "ehr" else _imaging_settings(args)
    module.migrate(settings)
    _export(section, args)
    serve(
        module.create_app(settings),
        settings.host,
        settings.port,
        workers=args.workers,
        log_level=settings.log_level,
        factory=f"imagebridge.{section}.app:app_from_env",
        tls_certfile=settings.tls_certfile,
        tls_keyfile=settings.tls_keyfile,
    )
    return 0


def cmd_ehr_serve(args: argparse.Namespace) -> int:
    return _serve("ehr", args)


def cmd_imaging_serve(args: argparse.Namespace) -> int:
    return _serve("imaging", args)


def cmd_imaging_sync(args: argparse.Namespace) -> int:
    """Proxy mode: scan the upstream PACS and publish what it holds to the EHR, once."""
    from imagebridge.imaging.app import build_context, migrate, scanner
    from imagebridge.imaging.gate.ehr_client import EhrUnavailable
    from imagebridge.imaging.upstream.client import UpstreamError
    from imagebridge.imaging.upstream.sync import sync_once

    settings = _imaging_settings(args)
    if not settings.upstream_url:
        print("imaging sync needs an upstream (--upstream or the upstream_url setting)", file=sys.stderr)
        return 2
    migrate(settings)

    async def run() -> int:
        ctx = build_context(settings)
        try:
            scan = scanner(ctx)
            assert scan is not None
            found, remaining = await sync_once(scan, ctx.publisher, everything=args.all)
        except (UpstreamError, EhrUnavailable) as exc:
            print(f"imaging sync failed: {exc}", file=sys.stderr)
            return 1
        else:
            print(f"{found} studies found upstream, {remaining} still waiting to be published")
            return 0
        finally:
            if ctx.upstream is not None:
                await ctx.upstream.aclose()
            await ctx.http.aclose()
            await ctx.engine.dispose()

    return asyncio.run(run())


def cmd_ehr_migrate(args: argparse.Namespace) -> int:
    from imagebridge.ehr.app import migrate

    migrate(_ehr_settings(args))
    return 0


def cmd_imaging_migrate(args: argparse.Namespace) -> int:
    from imagebridge.imaging.app import migrate

    migrate(_imaging_settings(args))
    return 0


def _with_admin(args: argparse.Namespace, what: str, body: Callable[[Admin], Awaitable[int]]) -> int:
    """Migrate the EHR database and run ``body`` with an :class:`Admin` on it.

    A ``ValueError`` (bad input) is printed as ``imagebridge ehr <what>: <message>`` with exit code 2.
    """
    from imagebridge.ehr.admin import Admin
    from imagebridge.ehr.app import migrate

    settings = _ehr_settings(args)
    migrate(settings)

    async def run() -> int:
        admin = Admin(settings)
        try:
            return await body(admin)
        except ValueError as exc:
            print(f"imagebridge ehr {what}: {exc}", file=sys.stderr)
            return 2
        finally:
            await admin.close()

    return asyncio.run(run())


def _missing(kind: str, name: str) -> int:
    print(f"no {kind} {name!r}", file=sys.stderr)
    return 1


def _show(kind: str, name: str, found: Any, to_json: Callable[[Any], dict[str, Any]]) -> int:
    """Print ``found`` as JSON (exit 0), or say there is no such ``kind`` (exit 1)."""
    if found is None:
        return _missing(kind, name)
    print(json.dumps(to_json(found), indent=2))
    return 0


def _state(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


def cmd_ehr_clients(args: argparse.Namespace) -> int:
    """``imagebridge ehr clients add|list|show|disable|enable|imaging-source``: apps and services an
    administrator registers."""
    from imagebridge.ehr.admin import read_jwks

    async def body(admin: Admin) -> int:
        if args.action == "add":
            client = await admin.add_client(
                args.client_id,
                args.kind,
                scope=args.scope,
                name=args.name or "",
                jwks=read_jwks(args.jwks_file) if args.jwks_file else None,
                jwks_uri=args.jwks_uri,
                redirect_uris=args.redirect_uri or (),
                launch_url=args.launch_url,
                group=args.group,
                zero_click=args.zero_click,
                imaging_source=args.imaging_source,
            )
            return _show("client", args.client_id, client, _client_json)
        if args.action == "show":
            return _show("client", args.client_id, await admin.clients.get(args.client_id), _client_json)
        if args.action in ("disable", "enable"):
            if not await admin.clients.set_enabled(args.client_id, args.action == "enable"):
                return _missing("client", args.client_id)
            print(f"{args.action}d {args.client_id}")
            return 0
        if args.action == "imaging-source":
            if not await admin.clients.set_imaging_source(args.client_id, not args.off):
                return _missing("client", args.client_id)
            print(f"{args.client_id} is {'no longer ' if args.off else ''}an imaging source")
            return 0
        for client in await admin.clients.all():
            print("\t".join((client.client_id, client.kind, _state(client.enabled), client.scope)))
        return 0

    return _with_admin(args, f"clients {args.action}", body)


def _client_json(client: Any) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "kind": client.kind,
        "name": client.name,
        "scope": client.scope,
        "jwks_uri": client.jwks_uri,
        "redirect_uris": list(client.redirect_uris),
        "launch_url": client.launch_url,
        "group": client.group_ref,
        "zero_click": client.zero_click,
        "imaging_source": client.imaging_source,
        "enabled": client.enabled,
    }


def cmd_demo(args: argparse.Namespace) -> int:
    from imagebridge.apps.demo import run_demo

    return run_demo(
        ehr_port=args.ehr_port, imaging_port=args.imaging_port, data_dir=args.data_dir, reset=args.reset
    )


_UPSTREAM_CA_HELP = "PEM CA bundle trusted for the upstream's certificate (a private CA)"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="imagebridge", description=__doc__)
    top.add_argument("--config", type=Path, help="TOML settings file (default: $IMAGEBRIDGE_CONFIG)")
    commands = top.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run both services with synthetic data on loopback")
    demo.add_argument("--ehr-port", type=int, default=8080)
    demo.add_argument("--imaging-port", type=int, default=8081)
    demo.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    demo.add_argument("--reset", action="store_true", help="delete the data folder first")
    demo.set_defaults(func=cmd_demo)

    for name, serve_cmd, migrate_cmd in (
        ("ehr", cmd_ehr_serve, cmd_ehr_migrate),
        ("imaging", cmd_imaging_serve, cmd_imaging_migrate),
    ):
        service = commands.add_parser(name, help=f"the {name} service").add_subparsers(
            dest="action", required=True
        )
        run = service.add_parser("serve", help=f"migrate the database and serve the {name} API")
        run.add_argument("--host")
        run.add_argument("--port", type=int)
        run.add_argument("--workers", type=int, default=1)
        run.add_argument(
            "--audit-fsync",
            action=argparse.BooleanOptionalAction,
            help="fdatasync the audit journal before each response (default: the audit_fsync setting)",
        )
        run.set_defaults(func=serve_cmd)
        service.add_parser("migrate", help="bring the database to the current schema").set_defaults(
            func=migrate_cmd
        )
        if name == "ehr":
            _clients_parser(service)
            _users_parser(service)
            _studies_parser(service)
        else:
            run.add_argument("--upstream", help="proxy mode: the DICOMweb base URL of an existing PACS")
            run.add_argument("--upstream-auth", help="basic:user:password or bearer:TOKEN for the upstream")
            run.add_argument("--upstream-ca-file", help=_UPSTREAM_CA_HELP)
            _archive_parsers(service)
            audit = service.add_parser("audit", help="print the audit trail (one record per decision)")
            audit.add_argument("--since", help="ISO 8601 date or date-time (UTC unless an offset is given)")
            audit.add_argument("--patient", help="a patient id, or <mrn system>|<DICOM PatientID>")
            audit.add_argument("--json", action="store_true", help="one JSON object per line")
            audit.set_defaults(func=cmd_imaging_audit)
            sync = service.add_parser(
                "sync", help="proxy mode: publish the upstream's studies to the EHR now"
            )
            sync.add_argument("--upstream", help="the DICOMweb base URL of the upstream PACS")
            sync.add_argument("--upstream-auth", help="basic:user:password or bearer:TOKEN")
            sync.add_argument("--upstream-ca-file", help=_UPSTREAM_CA_HELP)
            sync.add_argument("--all", action="store_true", help="scan every study, not only recent ones")
            sync.set_defaults(func=cmd_imaging_sync)
    return top


def cmd_imaging_audit(args: argparse.Namespace) -> int:
    from imagebridge.imaging.app import migrate
    from imagebridge.imaging.gate.audit import report

    settings = _imaging_settings(args)
    migrate(settings)
    return report(settings, args.since, args.patient, args.json)


def cmd_imaging_archive(args: argparse.Namespace) -> int:
    from imagebridge.imaging.app import migrate
    from imagebridge.imaging.archive.sweep import run

    settings = _imaging_settings(args)
    migrate(settings)
    return run(settings, args.action, getattr(args, "grace", None), getattr(args, "dry_run", False))


def _archive_parsers(service: Any) -> None:
    service.add_parser(
        "fsck", help="report orphan blobs and index rows without their blob (exit 1 if any row)"
    ).set_defaults(func=cmd_imaging_archive)
    sweep = service.add_parser("sweep", help="delete orphan blobs and spool files past the grace period")
    sweep.add_argument("--grace", type=float, help="seconds (default: the orphan_grace_seconds setting)")
    sweep.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    sweep.set_defaults(func=cmd_imaging_archive)


def _clients_parser(service: Any) -> None:
    clients = service.add_parser("clients", help="register and manage clients").add_subparsers(
        dest="action", required=True
    )
    add = clients.add_parser("add", help="register a backend or confidential client")
    add.add_argument("client_id")
    add.add_argument("--kind", choices=["backend", "confidential", "public"], default="backend")
    add.add_argument("--scope", required=True, help="the most this client may ever be granted")
    add.add_argument("--name")
    add.add_argument("--jwks-file", type=Path, help="a file with the client's public JWK Set")
    add.add_argument("--jwks-uri", help="where the client publishes its JWK Set")
    add.add_argument("--redirect-uri", action="append")
    add.add_argument("--launch-url")
    add.add_argument("--group", help="Group/<id> a backend client may reach")
    add.add_argument(
        "--zero-click", action="store_true", help="clinicians launch it without a consent screen"
    )
    add.add_argument(
        "--imaging-source",
        action="store_true",
        help="a modality or archive feed: it may store imaging (STOW-RS) for any PatientID",
    )
    clients.add_parser("enable", help="let a disabled client get tokens again").add_argument("client_id")
    source = clients.add_parser(
        "imaging-source", help="let a registered backend client store imaging for any PatientID"
    )
    source.add_argument("client_id")
    source.add_argument("--off", action="store_true", help="take the permission away again")
    _registry_actions(clients, "client_id", cmd_ehr_clients, ("enable", "imaging-source"))


def _registry_actions(
    actions: Any, key: str, func: Callable[[argparse.Namespace], int], more: Sequence[str] = ()
) -> None:
    """``list``, ``show <key>``, ``disable <key>`` and each of ``more`` (``<key>``) next to ``add``,
    whose parsers exist already; all run ``func``."""
    for action in ("list", "show", "disable"):
        sub = actions.add_parser(action)
        if action != "list":
            sub.add_argument(key)
    for action in ("add", "list", "show", "disable", *more):
        actions.choices[action].set_defaults(func=func, action=action)


def _read_password(args: argparse.Namespace) -> str:
    """The new password: from stdin, a file, a named environment variable or a prompt, never argv."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if args.password_file:
        try:
            text: str = args.password_file.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {args.password_file}: {exc.strerror}") from exc
        return (text.splitlines() or [""])[0]
    if args.password_env:
        if args.password_env not in os.environ:
            raise ValueError(f"the environment variable {args.password_env} is not set")
        return os.environ[args.password_env]
    if not sys.stdin.isatty():
        raise ValueError(
            "no terminal to ask for the password: use --password-stdin, --password-file or --password-env"
        )
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Repeat the password: ") != password:
        raise ValueError("the passwords differ")
    return password


def _user_json(user: Any) -> dict[str, Any]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "fhirUser": user.fhir_user,
        "roles": list(user.roles),
        "enabled": user.enabled,
    }


def cmd_ehr_users(args: argparse.Namespace) -> int:
    """``imagebridge ehr users add|list|show|disable|enable|passwd``: the people who sign in to the EHR."""

    async def body(admin: Admin) -> int:
        if args.action == "add":
            user = await admin.add_user(
                args.username,
                _read_password(args),
                args.fhir_user,
                display_name=args.name or "",
                roles=args.role or (),
            )
            return _show("user", args.username, user, _user_json)
        if args.action == "show":
            return _show("user", args.username, await admin.users.get(args.username), _user_json)
        if args.action == "disable":
            ended = await admin.disable_user(args.username)
            if ended is None:
                return _missing("user", args.username)
            print(f"disabled {args.username}: {ended[0]} sessions ended, {ended[1]} tokens revoked")
            return 0
        if args.action == "enable":
            if not await admin.users.set_enabled(args.username, True):
                return _missing("user", args.username)
            print(f"enabled {args.username}")
            return 0
        if args.action == "passwd":
            sessions = await admin.set_password(args.username, _read_password(args))
            if sessions is None:
                return _missing("user", args.username)
            print(f"new password for {args.username}: {sessions} sessions ended")
            return 0
        for user in await admin.users.all():
            print("\t".join((user.username, user.fhir_user, " ".join(user.roles), _state(user.enabled))))
        return 0

    return _with_admin(args, f"users {args.action}", body)


def _users_parser(service: Any) -> None:
    users = service.add_parser("users", help="people who sign in to the EHR").add_subparsers(
        dest="action", required=True
    )
    add = users.add_parser("add", help="add a patient, proxy or clinician who signs in")
    add.add_argument("username")
    add.add_argument(
        "--fhir-user", required=True, help="Patient/<id>, RelatedPerson/<id> or Practitioner/<id>"
    )
    add.add_argument("--name", help="the name shown in the EHR (default: the username)")
    add.add_argument(
        "--role",
        action="append",
        choices=["patient", "proxy", "clinician"],
        help="default: the role the fhirUser implies",
    )
    users.add_parser("enable", help="let a disabled user sign in again").add_argument("username")
    passwd = users.add_parser("passwd", help="set a new password (ends the user's EHR sessions)")
    passwd.add_argument("username")
    for parser in (add, passwd):
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        source.add_argument(
            "--password-file", type=Path, help="read the password from this file's first line"
        )
        source.add_argument("--password-env", metavar="VAR", help="read the password from this variable")
    _registry_actions(users, "username", cmd_ehr_users, ("enable", "passwd"))


def cmd_ehr_studies(args: argparse.Namespace) -> int:
    from imagebridge.ehr.fhir import reconcile
    from imagebridge.ehr.fhir.store import ResourceConflict

    async def body(admin: Admin) -> int:
        if args.study_action == "unreconciled":
            for study in await reconcile.unreconciled(admin.store):
                print(reconcile.describe(study))
            return 0
        try:
            stored = await reconcile.link(admin.store, args.study_uid, args.patient)
        except (reconcile.NotFound, ResourceConflict) as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"linked ImagingStudy/{stored['id']} to {args.patient}")
        return 0

    return _with_admin(args, f"studies {args.study_action}", body)


def _studies_parser(service: Any) -> None:
    studies = service.add_parser(
        "studies", help="studies the EHR could not match to a patient"
    ).add_subparsers(dest="study_action", required=True)
    studies.add_parser("unreconciled", help="list studies visible to no one").set_defaults(
        func=cmd_ehr_studies
    )
    link = studies.add_parser("link", help="link an unreconciled study to its patient")
    link.add_argument("study_uid", help="Study Instance UID")
    link.add_argument("patient", help="Patient/<id>")
    link.set_defaults(func=cmd_ehr_studies)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
