"""Create a throwaway certificate authority with server and client certificates, for tests and local TLS.

    python scripts/make_dev_certs.py tls/                  # the names docker/compose.tls.yml uses
    python scripts/make_dev_certs.py DIR --server-name my-host --server-name 10.0.0.5

It runs the `openssl` command line (OpenSSL 3.0 or later, for `req -CA`), so it needs no Python
package. Keys are unencrypted P-256 keys in PKCS#8 PEM files that only the owner can read, and the
certificates are readable by everyone. The
certificates are valid for `--days` days and are meant for development and tests, never for
production.

Files written into DIR:

    ca.pem                     the CA certificate that clients and servers trust
    server.pem, server.key     a server certificate for every --server-name (DNS names or IP addresses)
    client.pem, client.key     a client certificate for mutual TLS, common name "pq-client"
    other-ca.pem               a second, unrelated CA ...
    other-client.pem, .key     ... and a client certificate signed by it, which mutual TLS must reject
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Names that the compose services and a probe on the same host connect with.
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "image-encoder", "text-encoder", "fusion-predictor", "redis")
CLIENT_COMMON_NAME = "pq-client"
DEFAULT_DAYS = 30


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the files that `make_certificates` writes."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _openssl(*arguments: str) -> None:
    executable = shutil.which("openssl")
    if executable is None:
        raise FileNotFoundError("the openssl command is not on PATH; install OpenSSL 3.0 or later")
    result = subprocess.run([executable, *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {arguments[0]} failed with exit status {result.returncode}: {result.stderr}")


def _subject_alt_names(names: Sequence[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            entries.append(f"DNS:{name}")
        else:
            entries.append(f"IP:{name}")
    return "subjectAltName=" + ",".join(entries)


def _make_ca(cert: Path, key: Path, common_name: str, days: int) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )


def _make_leaf(
    cert: Path, key: Path, *, ca_cert: Path, ca_key: Path, common_name: str, extensions: Sequence[str], days: int
) -> None:
    added: list[str] = []
    for extension in extensions:
        added += ["-addext", extension]
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={common_name}",
        "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-addext", "basicConstraints=critical,CA:FALSE",
        *added,
    )


def make_certificates(
    out_dir: Path, server_names: Sequence[str] = DEFAULT_SERVER_NAMES, *, days: int = DEFAULT_DAYS
) -> DevCertificates:
    """Write a CA, a server and a client certificate, and a client of another CA, into `out_dir`.

    The server certificate covers every name in `server_names`. The CA keys are deleted once the
    certificates are signed, so nothing else can be signed with them later.
    """
    if not server_names:
        raise ValueError("at least one server name is required")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = DevCertificates(
        ca=out_dir / "ca.pem",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        client_cert=out_dir / "client.pem",
        client_key=out_dir / "client.key",
        other_ca=out_dir / "other-ca.pem",
        other_client_cert=out_dir / "other-client.pem",
        other_client_key=out_dir / "other-client.key",
    )
    ca_key = out_dir / "ca.key"
    other_ca_key = out_dir / "other-ca.key"
    # The keys are created readable by the owner only: openssl itself uses the umask.
    previous_umask = os.umask(0o077)
    try:
        _make_ca(paths.ca, ca_key, "pq development CA", days)
        _make_leaf(
            paths.server_cert, paths.server_key, ca_cert=paths.ca, ca_key=ca_key,
            common_name=server_names[0],
            extensions=[_subject_alt_names(server_names), "extendedKeyUsage=serverAuth,clientAuth"],
            days=days,
        )
        _make_leaf(
            paths.client_cert, paths.client_key, ca_cert=paths.ca, ca_key=ca_key,
            common_name=CLIENT_COMMON_NAME, extensions=["extendedKeyUsage=clientAuth"], days=days,
        )
        _make_ca(paths.other_ca, other_ca_key, "pq unrelated CA", days)
        _make_leaf(
            paths.other_client_cert, paths.other_client_key, ca_cert=paths.other_ca, ca_key=other_ca_key,
            common_name=CLIENT_COMMON_NAME, extensions=["extendedKeyUsage=clientAuth"], days=days,
        )
    finally:
        os.umask(previous_umask)
        ca_key.unlink(missing_ok=True)
        other_ca_key.unlink(missing_ok=True)
    # Certificates are public, so any uid that a container runs as may read them.
    for cert in (paths.ca, paths.server_cert, paths.client_cert, paths.other_ca, paths.other_client_cert):
        cert.chmod(0o644)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with arguments `argv` and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the PEM files into; created when missing")
    parser.add_argument(
        "--server-name",
        action="append",
        dest="server_names",
        help=f"DNS name or IP address of the server certificate; repeat it (default: {', '.join(DEFAULT_SERVER_NAMES)})",
    )
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default: {DEFAULT_DAYS})")
    args = parser.parse_args(argv)

    paths = make_certificates(args.out_dir, args.server_names or DEFAULT_SERVER_NAMES, days=args.days)
    sys.stdout.write(f"wrote a development CA, server and client certificates into {paths.ca.parent}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
