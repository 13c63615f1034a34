"""A real SMTP server for the SMTP journaling sink's tests, on top of aiosmtpd.

Listens on loopback, requires STARTTLS before MAIL (aiosmtpd's require_starttls) and, when
--users is given, AUTH PLAIN/LOGIN after STARTTLS. Each accepted message is stored exactly as
received (the DATA bytes, unmodified) in a Maildir, preceded by the envelope the way an MTA's
local delivery records it (Return-Path, X-Original-To per recipient): tests read the journal
mailbox back from that Maildir and parse it with an independent MIME parser.

    server.py --listen 127.0.0.1:PORT --cert CERT --key KEY --maildir DIR [--users FILE]
"""

import argparse
import asyncio
import mailbox
import signal
import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class RawMaildir:
    """aiosmtpd handler: store each message's raw bytes in a Maildir."""

    def __init__(self, path):
        self.maildir = mailbox.Maildir(path, create=True)

    async def handle_DATA(self, server, session, envelope):
        trace = f"Return-Path: <{envelope.mail_from}>\r\n".encode()
        for rcpt in envelope.rcpt_tos:
            trace += f"X-Original-To: {rcpt}\r\n".encode()
        self.maildir.add(trace + envelope.original_content)
        return "250 OK: queued"


def authenticator_for(users_file):
    users = {}
    with open(users_file, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                name, _, password = line.partition(":")
                users[name.encode()] = password.encode()

    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and users.get(auth_data.login) == auth_data.password
        # handled=False: aiosmtpd itself answers a failed login with 535.
        return AuthResult(success=ok, handled=False)

    return check


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--users")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    kwargs = dict(tls_context=context, require_starttls=True)
    if args.users:
        kwargs.update(authenticator=authenticator_for(args.users), auth_required=True)
    else:
        kwargs.update(auth_require_tls=True)
    controller = Controller(RawMaildir(args.maildir), hostname=host, port=int(port), **kwargs)
    controller.start()
    print(f"listening on {host}:{port}", flush=True)

    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.run_until_complete(stop)
    controller.stop()


if __name__ == "__main__":
    main()
