"""Rule ``secrets``: private keys, token formats, high-entropy credentials; never echoed back."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance import Artifact, Finding
from governance._rules import build_rule
from governance._secrets import entropy

RULE = build_rule("secrets", {})
# Built from pieces so this test file does not itself look like it leaks credentials.
GITHUB = "ghp" + "_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
SLACK = "xox" + "b-" + "1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
AWS_ID = "AKIA" + "Q3ZLKMN7RT2XW4YP"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ8w3Lk9Vq"
PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
GOOGLE = "AIza" + "SyD1x2Y3z4A5b6C7d8E9f0G1h2I3j4K5l6m"
STRIPE = "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc9X"
WEBHOOK = "https://hooks.slack.com/services/" + "T0123ABCD/B0456EFGH/abcdEFGHijklMNOPqrst1234"


def scan(text: str, path: str = "gen/settings.py") -> list[Finding]:
    return RULE.artifact(Artifact(path, text))


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (f"KEY = '''{PEM}'''\n", "PEM private key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\n", "PEM private key"),
        (f"token = '{GITHUB}'\n", "GitHub token"),
        (f"SLACK = '{SLACK}'\n", "Slack token"),
        (f"id = '{AWS_ID}'\n", "AWS access key id"),
        (f"aws_secret_access_key = '{AWS_SECRET}'\n", "AWS secret access key"),
        (f"key = '{GOOGLE}'\n", "Google API key"),
        (f"stripe = '{STRIPE}'\n", "Stripe live key"),
        (f"hook = '{WEBHOOK}'\n", "Slack webhook"),
    ],
)
def test_known_token_formats_are_found(text: str, label: str) -> None:
    found = scan(text)
    assert any(f.what.startswith(label) for f in found), found


@pytest.mark.parametrize(
    "text",
    [
        "password = 'hQ8x!Zr2pL0qVv9T'\n",
        'DB_PASSWORD = "Zx81-qpLm-77Ta-Wv0e"\n',
        "connect(user='app', password='k2P9wQz7LmX4rT8v')\n",
        "CONFIG = {'api_key': 'f3a9c1e07b2d4e8fa6c5'}\n",
        "self.client_secret = 'q7W2e9R4t1Y6u3I8'\n",
    ],
)
def test_high_entropy_credentials_in_python_are_found(text: str) -> None:
    (finding,) = scan(text)
    assert "high-entropy value assigned to" in finding.what
    assert finding.line == 1


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("deploy/app.env", "export API_TOKEN=Jd83kLq0Zm1Xp4Rt7Vw2\n"),
        ("config/app.yaml", "db:\n  password: Jd83kLq0Zm1Xp4Rt7Vw2\n"),
        ("config/app.ini", "[db]\nsecret_key = Jd83kLq0Zm1Xp4Rt7Vw2\n"),
    ],
)
def test_unquoted_credentials_in_config_files_are_found(path: str, text: str) -> None:
    found = scan(text, path)
    assert [f.line for f in found] == [text.count("\n")]


@pytest.mark.parametrize(
    "text",
    [
        "password = os.environ['DB_PASSWORD']\n",
        "token = settings.github_token\n",
        "password = '${DB_PASSWORD}'\n",
        "api_key = '<your-api-key>'\n",
        "password = 'aaaaaaaaaaaaaaaa'\n",  # long but not random
        "password = 'short'\n",
        "token_url = 'https://auth.example.org/oauth/token'\n",  # the name does not end in a secret word
        "key_id = 'AKIA-not-a-key'\n",
        "checksum = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'\n",
    ],
)
def test_references_templates_and_plain_values_are_not_secrets(text: str) -> None:
    assert scan(text) == []


def test_a_finding_never_repeats_the_secret() -> None:
    for finding in scan(f"token = '{GITHUB}'\npassword = 'hQ8x!Zr2pL0qVv9T'\n"):
        assert GITHUB not in finding.what and "hQ8x!Zr2pL0qVv9T" not in finding.what
        assert "chars)" in finding.what


def test_line_numbers_count_from_the_file_start() -> None:
    found = scan(f"a = 1\nb = 2\n\nKEY = '''{PEM}'''\n")
    assert [f.line for f in found] == [4]


def test_binary_content_is_searched_too() -> None:
    blob = b"\x00\x01" + AWS_ID.encode() + b"\xff"
    assert [f.what.split(":")[0] for f in RULE.artifact(Artifact("bin/data.bin", blob))] == [
        "AWS access key id"
    ]


def test_entropy_of_uniform_and_constant_strings() -> None:
    assert entropy("aaaa") == 0
    assert entropy("abcd") == pytest.approx(2.0)
    assert entropy("") == 0


@settings(max_examples=80, deadline=None)
@given(
    st.text(alphabet=string.ascii_letters + string.digits, min_size=20, max_size=40).filter(
        lambda s: entropy(s) >= 3.5
    )
)
def test_any_random_password_literal_is_found(value: str) -> None:
    assert len(scan(f"password = {value!r}\n")) == 1
