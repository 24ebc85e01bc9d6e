"""Ferry's files API as the official `openai` client sees it: create, list, retrieve,
content, delete; errors in OpenAI's shape."""
import pathlib

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
IRIS = ROOT / "crates/ferry-ml/tests/data/iris.csv"


def test_files_round_trip(client):
    data = IRIS.read_bytes()
    f = client.files.create(file=("iris.csv", data, "text/csv"), purpose="fine-tune")
    assert f.object == "file"
    assert f.id.startswith("file-")
    assert f.bytes == len(data)
    assert f.filename == "iris.csv"
    assert f.purpose == "fine-tune"
    assert f.created_at > 0
    # The CSV is profiled whatever the purpose (an extension field).
    assert f.model_extra["profile"]["rows"] == 150

    got = client.files.retrieve(f.id)
    assert (got.id, got.bytes, got.filename) == (f.id, f.bytes, f.filename)
    ids = [x.id for x in client.files.list()]
    assert f.id in ids
    assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]
    assert f.id not in [x.id for x in client.files.list(purpose="batch")]
    assert client.files.content(f.id).content == data

    d = client.files.delete(f.id)
    assert d.deleted and d.id == f.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)


def test_dataset_upload_and_errors(client):
    f = client.files.create(file=("iris.csv", IRIS.read_bytes()), purpose="dataset")
    cols = {c["name"]: c for c in f.model_extra["profile"]["columns"]}
    assert cols["target"]["distinct"] == 3
    assert cols["sepal_length"]["kind"] == "numeric"
    # A dataset that does not parse: 400 naming the row.
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.csv", b"a,b\n1,2\n3,4,5\n"), purpose="dataset")
    assert "row 1" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.txt", b"x"), purpose="nonsense")
    assert e.value.body["param"] == "purpose"
    client.files.delete(f.id)
