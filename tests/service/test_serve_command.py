"""`perfusion serve`'s user commands: a key printed once and stored hashed, revocation, one-line errors."""

from perfusion.cli import main
from perfusion.service.store import Store, key_hash


def test_add_user_prints_a_key_that_is_stored_only_hashed(tmp_path, capsys):
    assert main(["serve", "--data", str(tmp_path), "--add-user", "alice"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("pk_") and len(key) > 40
    database = b"".join(path.read_bytes() for path in tmp_path.glob("perfusion.db*"))  # with its write-ahead log
    assert key.encode() not in database and key_hash(key).encode() in database
    assert Store(tmp_path / "perfusion.db").user_for_key(key).name == "alice"


def test_a_second_key_for_a_live_user_and_revoking_a_stranger_are_one_line_errors(tmp_path, capsys):
    main(["serve", "--data", str(tmp_path), "--add-user", "bob"])
    capsys.readouterr()
    assert main(["serve", "--data", str(tmp_path), "--add-user", "bob"]) == 2
    assert main(["serve", "--data", str(tmp_path), "--revoke-user", "nobody"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "perfusion: error: user bob exists (revoke the key first to issue a new one)",
        "perfusion: error: no user named nobody",
    ]


def test_a_revoked_user_can_be_given_a_new_key(tmp_path, capsys):
    main(["serve", "--data", str(tmp_path), "--add-user", "carol"])
    old = capsys.readouterr().out.strip()
    assert main(["serve", "--data", str(tmp_path), "--revoke-user", "carol"]) == 0
    assert main(["serve", "--data", str(tmp_path), "--add-user", "carol"]) == 0
    new = capsys.readouterr().out.strip()
    store = Store(tmp_path / "perfusion.db")
    assert store.user_for_key(old) is None and store.user_for_key(new).name == "carol"
