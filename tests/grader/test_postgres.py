"""The class gradebook in PostgreSQL, for real: a private server on 127.0.0.1 (initdb into a
temporary folder, run as an unprivileged user), a small day01 class graded into it with
`python -m grader autograde --workers 2`, and every row compared with a SQLite run of the same
class. Skipped, with the reason, where the server (Debian: `apt-get install postgresql`) or the
driver (`pip install psycopg2-binary`) cannot be had."""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from helpers import ROOT, grader
from tools import corpus

pytestmark = pytest.mark.slow

DAY = corpus.ASSIGNMENT
CLASS = {"full-marks": 9, "planted-axis": 6.49, "bad-json": 0}  # correct, partial, broken: points
USER = "grader"  # the database role the course connects as
SUBMITTED_AT = "2026-12-01 10:00:00.000000 UTC"  # as nbgrader's collect writes timestamp.txt


# ----------------------------------------------------------------------------- a private server


def server_bin() -> Path:
    """The folder of initdb and postgres: Debian's newest /usr/lib/postgresql/VERSION/bin, or
    wherever PATH has them."""
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[4]) if Path(path).parts[4].isdigit() else 0,
    )
    found = debian[-1] if debian else shutil.which("initdb")
    if not found:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    return Path(found).parent


def server_user() -> dict:
    """subprocess arguments that run the server as an unprivileged user: PostgreSQL refuses to
    run as root, so as root it runs as the `postgres` user Debian's package makes."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and no `postgres` user to run the PostgreSQL server as")
    return {"user": account.pw_uid, "group": account.pw_gid}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(psycopg2, port: int, server, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres").close()
            return
        except psycopg2.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-1500:]
                pytest.skip(f"the PostgreSQL server did not start here:\n{tail}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def postgres_url():
    """The URL of an empty database on a private server that lives as long as this module."""
    psycopg2 = pytest.importorskip(
        "psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)"
    )
    binaries, as_user = server_bin(), server_user()
    # not pytest's tmp_path: the server's user must reach it, and root's temporary folders are
    # closed to others
    home = Path(tempfile.mkdtemp(prefix="grader-postgres-"))
    if as_user:
        shutil.chown(home, **as_user)
    data, log, port = home / "data", home / "server.log", free_port()
    made = subprocess.run(
        [binaries / "initdb", "-D", data, "-U", USER, "-A", "trust"]
        + ["--no-sync", "--locale=C", "--encoding=UTF8"],
        cwd=home,
        capture_output=True,
        text=True,
        **as_user,
    )
    if made.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"initdb failed here:\n{(made.stdout + made.stderr)[-1500:]}")
    with log.open("w") as output:
        server = subprocess.Popen(
            [binaries / "postgres", "-D", data, "-p", str(port)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={home}"]
            + ["-c", "fsync=off", "-c", "synchronous_commit=off"],
            cwd=home,
            stdout=output,
            stderr=subprocess.STDOUT,
            **as_user,
        )
    try:
        wait_until_ready(psycopg2, port, server, log)
        with contextlib.closing(
            psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres")
        ) as connection:
            connection.autocommit = True  # CREATE DATABASE runs outside a transaction
            connection.cursor().execute("CREATE DATABASE gradebook")
        # the driver named: a bare postgresql:// means psycopg 3 from SQLAlchemy 2.1 on
        yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/gradebook"
    finally:
        server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(home, ignore_errors=True)


# ----------------------------------------------------------------------------- the class


def course_with(where: Path, url: str = None) -> Path:
    """A day01 course holding CLASS's submissions, its gradebook at `url` (default: SQLite)."""
    where.mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", where)
    if url:
        with open(where / "nbgrader_config.py", "a") as f:
            f.write(f"\nc.CourseDirectory.db_url = {url!r}\n")
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder / DAY, where / folder / DAY)
    for student in CLASS:
        notebook = corpus.MANIFEST[student][0]()
        path = where / "submitted" / student / DAY / f"{DAY}.ipynb"
        path.parent.mkdir(parents=True)
        if isinstance(notebook, str):  # bad-json: not a notebook at all
            path.write_text(notebook)
        else:
            nbformat.write(notebook, path)
        (path.parent / "timestamp.txt").write_text(SUBMITTED_AT)
    return where


def every_row(url: str) -> dict:
    """Every row the grader writes for DAY, by (student, notebook, cell): submissions, grades
    and comments, with every value it sets."""
    rows = {}
    with Gradebook(url, "attention-from-scratch") as gradebook:
        for submission in gradebook.assignment_submissions(DAY):
            student = submission.student_id
            rows[student] = (submission.timestamp, submission.score, submission.max_score)
            for notebook in submission.notebooks:
                for g in notebook.grades:
                    rows[student, notebook.name, g.name] = (
                        g.auto_score,
                        g.manual_score,
                        g.extra_credit,
                        g.max_score,
                        g.needs_manual_grade,
                    )
                for c in notebook.comments:
                    rows[student, notebook.name, c.name, "comment"] = c.auto_comment
    return rows


def test_a_class_graded_into_postgresql_has_the_rows_of_a_sqlite_run(postgres_url, tmp_path):
    in_postgres = course_with(tmp_path / "postgres", postgres_url)
    in_sqlite = course_with(tmp_path / "sqlite")
    for course in (in_postgres, in_sqlite):
        done = grader("--course-dir", str(course), "autograde", DAY, "--workers", "2")
        assert done.returncode == 1, done.stdout + done.stderr  # bad-json: not graded
    assert not (in_postgres / "gradebook.db").exists()
    expected = every_row(f"sqlite:///{in_sqlite}/gradebook.db")
    assert every_row(postgres_url) == expected
    assert {student: round(expected[student][1], 6) for student in CLASS} == CLASS
    # a rerun reads the rows back from PostgreSQL and finds them as recorded
    again = grader("--course-dir", str(in_postgres), "autograde", DAY, "--workers", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 already graded (skipped), 0 written back" in again.stdout
