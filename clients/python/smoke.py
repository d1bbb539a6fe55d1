"""Drives a live Quiver through the Python clients generated from openapi/*.json.

Run by clients/python/test_client.sh, which generates the clients and starts Quiver:
QUIVER_CONTROL_URL and QUIVER_DATA_URL say where the planes listen. Every operation of
both specs is called through the generated functions, every answer is checked as a
typed model, and every write is read back: a spec that does not describe what the
server sends, or a server that does not do what it answers, fails here.
"""

import base64
import importlib
import math
import os
import pkgutil
import struct
import sys
import time
import uuid

import quiver_control_client.api
import quiver_data_client.api
from quiver_control_client import AuthenticatedClient as ControlAuthClient
from quiver_control_client import Client as ControlClient
from quiver_control_client.api.accounts import login, logout, signup
from quiver_control_client.api.health import healthz as control_healthz
from quiver_control_client.api.health import readyz as control_readyz
from quiver_control_client.api.keys import create_key, list_keys, revoke_key
from quiver_control_client.api.plans import list_plans
from quiver_control_client.api.projects import create_project, delete_project, get_project, list_projects, update_project
from quiver_control_client.api.tokens import create_token
from quiver_control_client.models import (
    CreateKey,
    CreatedKey,
    CreateProject,
    CreateToken,
    Credentials,
    KeyList,
    Metric,
    PlanList,
    ProjectList,
    ProjectView,
    Role,
    Scope,
    SessionView,
    TokenView,
    UpdateProject,
)
from quiver_control_client.models import ErrorEnvelope as ControlErrorEnvelope
from quiver_control_client.types import Unset as ControlUnset
from quiver_data_client import AuthenticatedClient as DataClient
from quiver_data_client import Client as DataAnonClient
from quiver_data_client.api.documents import (
    delete_document,
    get_document,
    insert_documents,
    insert_documents_batch,
    list_documents,
    list_models,
    search_documents,
    update_document,
)
from quiver_data_client.api.health import healthz as data_healthz
from quiver_data_client.api.health import readyz as data_readyz
from quiver_data_client.api.namespaces import delete_namespace, list_namespaces
from quiver_data_client.api.query import query_short, run_query
from quiver_data_client.api.vectors import (
    delete_vectors,
    delete_vectors_post,
    fetch_vectors,
    list_vectors,
    search_vectors,
    update_vector,
    upsert_vectors,
)
from quiver_data_client.models import (
    DeleteRequest,
    DeleteRequestFilterType0,
    DeleteResponse,
    Deleted,
    DocumentInput,
    DocumentInputMetadataType0,
    DocumentPage,
    DocumentView,
    ErrorEnvelope,
    InsertRequest,
    InsertResponse,
    ListResponse,
    ModelList,
    NamespaceList,
    QueryRequest,
    QueryResponse,
    RemoveResponse,
    ReplaceRequest,
    ReplaceRequestMetadataType0,
    ReplaceResponse,
    SearchRequest,
    SearchResponse,
    UpdateRequest,
    UpdateResponse,
    UpsertRequest,
    UpsertResponse,
    VectorInput,
    VectorInputMetadataType0,
    VectorQueryRequest,
    VectorSearchRequest,
    VectorSearchResponse,
)
from quiver_data_client.types import Unset

CONTROL = os.environ["QUIVER_CONTROL_URL"]
DATA = os.environ["QUIVER_DATA_URL"]
# The local model's dimension, so documents can be embedded server-side.
DIM = 384
MODEL = "local/all-minilm-l6-v2"
PASSWORD = "correct horse battery"


def _record_calls():
    """Every operation of both specs (a module of each generated client's `api`), each
    made to note when it is called: main() fails if one was never called, so an
    operation added to a spec needs a check here."""
    operations, called = set(), set()
    for package in (quiver_control_client.api, quiver_data_client.api):
        for tag in pkgutil.iter_modules(package.__path__):
            tag_package = importlib.import_module(f"{package.__name__}.{tag.name}")
            for operation in pkgutil.iter_modules(tag_package.__path__):
                module = importlib.import_module(f"{tag_package.__name__}.{operation.name}")
                operations.add(module.__name__)

                def noted(*args, _call=module.sync_detailed, _name=module.__name__, **kwargs):
                    called.add(_name)
                    return _call(*args, **kwargs)

                module.sync_detailed = noted
    return operations, called


OPERATIONS, CALLED = _record_calls()


def ok(response, model, status=200):
    """The typed body of a successful response, or a failure that shows the raw body."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.content!r}"
    assert isinstance(response.parsed, model), f"expected {model.__name__}, got {response.parsed!r}"
    return response.parsed


def ok_json(response):
    """A successful answer whose schema is a union or free-form (fetch by id or ids), as JSON
    through its typed model."""
    assert response.status_code == 200, f"expected 200, got {response.status_code}: {response.content!r}"
    assert response.parsed is not None and not isinstance(response.parsed, ErrorEnvelope), response.parsed
    return response.parsed.to_dict()


def no_content(response):
    """A 204 with nothing in it."""
    assert response.status_code == 204, f"expected 204, got {response.status_code}: {response.content!r}"
    assert response.content == b"", response.content


def err(response, status, code):
    """The typed error envelope of a failed response."""
    assert response.status_code == status, f"expected {status} {code}, got {response.status_code}: {response.content!r}"
    parsed = response.parsed
    assert isinstance(parsed, (ErrorEnvelope, ControlErrorEnvelope)), f"expected ErrorEnvelope, got {parsed!r}"
    assert parsed.error.code == code and parsed.error.status == status, parsed
    return parsed.error


def eventually(call, done, what, timeout=5.0):
    """Calls `call` until `done(response)` holds (changes that reach the data plane
    through its bus: "within a second"), and returns that response."""
    deadline = time.monotonic() + timeout
    while True:
        response = call()
        if done(response):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not after {timeout} s; last answer {response.status_code}: {response.content!r}"
            )
        time.sleep(0.2)


def unset(value):
    return isinstance(value, (Unset, ControlUnset)) or value is None


def vec(i):
    values = [0.0] * DIM
    values[i % DIM] = 1.0
    values[(i + 1) % DIM] = 0.5
    return values


def norm(values):
    return math.sqrt(sum(v * v for v in values))


def close(a, b, tolerance=1e-3):
    return abs(a - b) <= tolerance


def data_client(key):
    """A data-plane client that sends `x-api-key: <key>`."""
    return DataClient(base_url=DATA, token=key, prefix="", auth_header_name="x-api-key", raise_on_unexpected_status=True)


def bearer_client(credential):
    """A data-plane client that sends `Authorization: Bearer <credential>` (an API key or a project token)."""
    return DataClient(base_url=DATA, token=credential, raise_on_unexpected_status=True)


def health():
    for name, url, healthz, readyz, client_class in (
        ("control", CONTROL, control_healthz, control_readyz, ControlClient),
        ("data", DATA, data_healthz, data_readyz, DataAnonClient),
    ):
        client = client_class(base_url=url, raise_on_unexpected_status=True)
        alive = healthz.sync_detailed(client=client)
        assert alive.status_code == 200, (name, alive.status_code, alive.content)
        ready = readyz.sync_detailed(client=client)
        assert ready.status_code == 200, (name, ready.status_code, ready.content)
        body = ready.content.decode()
        assert '"status":"ready"' in body.replace(" ", ""), (name, body)


def accounts():
    """Signs up, signs in; returns (email, a control client, the plans by id)."""
    anon = ControlClient(base_url=CONTROL, raise_on_unexpected_status=True)
    plans = ok(list_plans.sync_detailed(client=anon), PlanList)
    plans = {p.id: p for p in plans.plans}
    assert {"starter", "developer", "business", "business_plus"} <= set(plans), plans
    assert plans["starter"].queries_per_minute == 30 and plans["business_plus"].queries_per_minute == 10_000, plans

    email = f"smoke-{uuid.uuid4().hex[:12]}@example.com"
    session = ok(signup.sync_detailed(client=anon, body=Credentials(email=email, password=PASSWORD)), SessionView, 201)
    assert session.user.email == email and session.token
    err(signup.sync_detailed(client=anon, body=Credentials(email=email, password=PASSWORD)), 409, "CONFLICT")
    err(login.sync_detailed(client=anon, body=Credentials(email=email, password="not the password")), 401, "UNAUTHORIZED")
    again = ok(login.sync_detailed(client=anon, body=Credentials(email=email, password=PASSWORD)), SessionView)
    assert again.user.id == session.user.id and again.user.email == email, again
    # Both sessions work; the login's is used from here on (logout() ends them both).
    for token in (session.token, again.token):
        control = ControlAuthClient(base_url=CONTROL, token=token, raise_on_unexpected_status=True)
        assert ok(list_projects.sync_detailed(client=control), ProjectList).projects == []
    return email, session.token, ControlAuthClient(base_url=CONTROL, token=again.token, raise_on_unexpected_status=True), plans


def vectors(data, ns):
    """The vector API: upsert, search, query by id(s), update, list, delete (one id, ids, filter), idempotency."""
    metadata = {i: {"category": "hardware" if i % 2 else "garden", "price": i} for i in range(10)}
    vectors = [
        VectorInput(id=f"sku-{i}", values=vec(i), metadata=VectorInputMetadataType0.from_dict(metadata[i])) for i in range(10)
    ]
    up = ok(upsert_vectors.sync_detailed(client=data, body=UpsertRequest(vectors=vectors, namespace=ns)), UpsertResponse)
    assert up.upserted_count == 10 and up.namespace == ns

    found = ok(
        search_vectors.sync_detailed(
            client=data,
            body=VectorSearchRequest.from_dict(
                {"namespace": ns, "vector": vec(3), "top_k": 3, "filter": {"category": "hardware"}, "consistency": "strong"}
            ),
        ),
        VectorSearchResponse,
    )
    assert found.matches[0].id == "sku-3" and close(found.matches[0].score, 1.0, 1e-2), found
    assert all(m.metadata["category"] == "hardware" for m in found.matches), found
    assert found.namespace == ns and found.seq >= up.seq, found

    # The same query as base64 of little-endian float32s (OpenAI's encoding_format="base64").
    encoded = base64.b64encode(struct.pack(f"<{DIM}f", *vec(3))).decode()
    by_base64 = ok(
        search_vectors.sync_detailed(
            client=data,
            body=VectorSearchRequest.from_dict(
                {"namespace": ns, "vector": encoded, "top_k": 3, "filter": {"category": "hardware"}, "consistency": "strong"}
            ),
        ),
        VectorSearchResponse,
    )
    assert [m.id for m in by_base64.matches] == [m.id for m in found.matches], by_base64

    # Query by id: the values and metadata as written.
    one = ok_json(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="sku-1")))
    assert one == {"id": "sku-1", "namespace": ns, "values": vec(1), "metadata": metadata[1]}, one
    many = ok_json(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, ids=["sku-1", "sku-2", "nope"])))
    assert many["namespace"] == ns, many
    assert sorted(many["vectors"], key=lambda v: v["id"]) == [
        {"id": f"sku-{i}", "values": vec(i), "metadata": metadata[i]} for i in (1, 2)
    ], many
    err(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="nope")), 404, "NOT_FOUND")

    # Update merges metadata key by key; null removes a key.
    updated = ok(
        update_vector.sync_detailed(client=data, body=UpdateRequest.from_dict({"namespace": ns, "id": "sku-1", "metadata": {"price": 99}})),
        UpdateResponse,
    )
    assert updated.updated and updated.id == "sku-1" and updated.namespace == ns, updated
    after = ok_json(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="sku-1")))
    assert after["metadata"] == {"category": "hardware", "price": 99} and after["values"] == vec(1), after
    ok(
        update_vector.sync_detailed(
            client=data,
            body=UpdateRequest.from_dict({"namespace": ns, "id": "sku-3", "metadata": {"price": None, "tag": "sale"}}),
        ),
        UpdateResponse,
    )
    after = ok_json(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="sku-3")))
    assert after["metadata"] == {"category": "hardware", "tag": "sale"}, after
    err(
        update_vector.sync_detailed(client=data, body=UpdateRequest.from_dict({"namespace": ns, "id": "nope", "metadata": {"a": 1}})),
        404,
        "NOT_FOUND",
    )

    page = ok(list_vectors.sync_detailed(client=data, namespace=ns, prefix="sku-", limit=4), ListResponse)
    assert page.ids == ["sku-0", "sku-1", "sku-2", "sku-3"] and isinstance(page.next_cursor, str), page

    # Delete by one id (the seed's form), by ids, by filter.
    gone = ok(delete_vectors.sync_detailed(client=data, body=DeleteRequest(namespace=ns, id="sku-9")), DeleteResponse)
    assert gone.deleted_count == 1 and gone.namespace == ns, gone
    err(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="sku-9")), 404, "NOT_FOUND")
    gone = ok(delete_vectors.sync_detailed(client=data, body=DeleteRequest(namespace=ns, id="sku-9")), DeleteResponse)
    assert gone.deleted_count == 0, gone
    # POST is the same delete as DELETE.
    gone = ok(delete_vectors_post.sync_detailed(client=data, body=DeleteRequest(namespace=ns, ids=["sku-0", "sku-2"])), DeleteResponse)
    assert gone.deleted_count == 2, gone
    err(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="sku-0")), 404, "NOT_FOUND")
    gone = ok(
        delete_vectors.sync_detailed(
            client=data, body=DeleteRequest(namespace=ns, filter_=DeleteRequestFilterType0.from_dict({"category": "garden"}))
        ),
        DeleteResponse,
    )
    assert gone.deleted_count == 3, gone  # sku-4, 6, 8

    # x-idempotency-key: the same body replays the first answer without running again;
    # another body under the key is a 422.
    key = f"smoke-{uuid.uuid4().hex}"
    body = UpsertRequest(vectors=[VectorInput(id="idem-1", values=vec(11))], namespace=ns)
    first = upsert_vectors.sync_detailed(client=data, body=body, x_idempotency_key=key)
    ok(first, UpsertResponse)
    assert "idempotent-replayed" not in first.headers, first.headers
    # Another write moves the namespace's seq on: a request that ran again would answer with the new seq.
    later = ok(
        upsert_vectors.sync_detailed(client=data, body=UpsertRequest(vectors=[VectorInput(id="idem-2", values=vec(12))], namespace=ns)),
        UpsertResponse,
    )
    assert later.seq > first.parsed.seq, (first.parsed, later)
    replay = upsert_vectors.sync_detailed(client=data, body=body, x_idempotency_key=key)
    ok(replay, UpsertResponse)
    assert replay.headers.get("idempotent-replayed") == "true", replay.headers
    assert replay.content == first.content, (replay.content, first.content)
    other = UpsertRequest(vectors=[VectorInput(id="idem-3", values=vec(13))], namespace=ns)
    err(upsert_vectors.sync_detailed(client=data, body=other, x_idempotency_key=key), 422, "UNPROCESSABLE")
    err(fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="idem-3")), 404, "NOT_FOUND")

    # Every id, a page of two at a time.
    ids, cursor = [], None
    while True:
        kwargs = {"cursor": cursor} if cursor else {}
        page = ok(list_vectors.sync_detailed(client=data, namespace=ns, limit=2, **kwargs), ListResponse)
        assert len(page.ids) <= 2 and page.namespace == ns, page
        ids += page.ids
        if unset(page.next_cursor):
            break
        cursor = page.next_cursor
    assert ids == ["idem-1", "idem-2", "sku-1", "sku-3", "sku-5", "sku-7"], ids


def documents(data, bearer, coll):
    """The document API, authenticated with `Authorization: Bearer <key>` as the seed page does."""
    inserted = ok(
        insert_documents.sync_detailed(
            coll,
            client=bearer,
            body=InsertRequest(
                documents=[
                    DocumentInput(
                        content="Quiver stores vectors and searches them by similarity.",
                        id="doc-1",
                        metadata=DocumentInputMetadataType0.from_dict({"source": "docs", "category": "technology"}),
                    )
                ]
            ),
        ),
        InsertResponse,
    )
    assert inserted.ids == ["doc-1"] and inserted.inserted == 1, inserted
    batch = ok(
        insert_documents_batch.sync_detailed(
            coll,
            client=bearer,
            body=InsertRequest(
                documents=[
                    DocumentInput(
                        content="Bananas are yellow fruit that grow in bunches.",
                        id="doc-2",
                        metadata=DocumentInputMetadataType0.from_dict({"source": "blog", "category": "food"}),
                    ),
                    DocumentInput(content="An explicit embedding.", id="doc-3", embedding=vec(7)),
                ]
            ),
        ),
        InsertResponse,
    )
    assert batch.inserted == 2 and batch.ids == ["doc-2", "doc-3"], batch

    doc = ok(get_document.sync_detailed(coll, "doc-1", client=bearer), DocumentView)
    assert doc.id == "doc-1" and doc.content == "Quiver stores vectors and searches them by similarity.", doc
    assert doc.metadata.to_dict() == {"source": "docs", "category": "technology"}, doc.metadata
    assert len(doc.embedding) == DIM and close(norm(doc.embedding), 1.0), "the model's embeddings are normalised"
    explicit = ok(get_document.sync_detailed(coll, "doc-3", client=bearer), DocumentView)
    assert explicit.embedding == vec(7) and explicit.metadata.to_dict() == {}, explicit

    # PUT replaces content and metadata, and embeds the new content.
    replaced = ok(
        update_document.sync_detailed(
            coll,
            "doc-3",
            client=bearer,
            body=ReplaceRequest(
                content="Yellow bananas, replaced.",
                metadata=ReplaceRequestMetadataType0.from_dict({"source": "replaced"}),
                regenerate_embedding=True,
            ),
        ),
        ReplaceResponse,
    )
    assert replaced.updated and replaced.id == "doc-3", replaced
    doc3 = ok(get_document.sync_detailed(coll, "doc-3", client=bearer), DocumentView)
    assert doc3.content == "Yellow bananas, replaced." and doc3.metadata.to_dict() == {"source": "replaced"}, doc3
    assert doc3.embedding != vec(7) and close(norm(doc3.embedding), 1.0), "regenerate_embedding embeds the new content"
    assert doc3.updated_at >= explicit.updated_at and doc3.created_at == explicit.created_at, doc3
    err(
        update_document.sync_detailed(coll, "no-such-doc", client=bearer, body=ReplaceRequest(content="x")), 404, "NOT_FOUND"
    )

    docs = ok(list_documents.sync_detailed(coll, client=bearer, limit=10), DocumentPage)
    assert docs.row_count == 3 and [d["id"] for d in docs.documents] == ["doc-1", "doc-2", "doc-3"], docs
    first = ok(list_documents.sync_detailed(coll, client=bearer, limit=2), DocumentPage)
    assert [d["id"] for d in first.documents] == ["doc-1", "doc-2"] and first.has_more is True, first
    rest = ok(list_documents.sync_detailed(coll, client=bearer, limit=2, cursor=first.next_cursor), DocumentPage)
    assert [d["id"] for d in rest.documents] == ["doc-3"] and rest.has_more is False, rest
    assert first.total_count == rest.total_count == 3 and unset(rest.next_cursor), (first, rest)
    by_offset = ok(list_documents.sync_detailed(coll, client=bearer, limit=1, offset=1), DocumentPage)
    assert [d["id"] for d in by_offset.documents] == ["doc-2"] and by_offset.has_more is True, by_offset

    # Search: by vector, by text, with filters, min_similarity and include_metadata.
    by_vector = ok(
        search_documents.sync_detailed(coll, client=bearer, body=SearchRequest(vector=doc.embedding, limit=1)), SearchResponse
    )
    assert [r.id for r in by_vector.results] == ["doc-1"] and close(by_vector.results[0].similarity, 1.0, 1e-2), by_vector
    assert by_vector.results[0].content == doc.content and unset(by_vector.query_embedding_model), by_vector
    by_text = ok(
        search_documents.sync_detailed(coll, client=bearer, body=SearchRequest.from_dict({"query": "yellow fruit", "limit": 3})),
        SearchResponse,
    )
    assert by_text.results[0].id in ("doc-2", "doc-3") and by_text.query_embedding_model == MODEL, by_text
    similarities = [r.similarity for r in by_text.results]
    assert similarities == sorted(similarities, reverse=True), by_text

    filtered = ok(
        search_documents.sync_detailed(
            coll,
            client=bearer,
            body=SearchRequest.from_dict({"query": "yellow fruit", "limit": 10, "filters": {"category": "technology"}}),
        ),
        SearchResponse,
    )
    assert [r.id for r in filtered.results] == ["doc-1"], filtered
    assert filtered.results[0].metadata.to_dict() == {"source": "docs", "category": "technology"}, filtered
    filtered = ok(
        search_documents.sync_detailed(
            coll,
            client=bearer,
            body=SearchRequest.from_dict(
                {"query": "yellow fruit", "limit": 10, "filters": {"source": {"$in": ["blog", "replaced"]}}, "include_metadata": False}
            ),
        ),
        SearchResponse,
    )
    assert sorted(r.id for r in filtered.results) == ["doc-2", "doc-3"], filtered
    assert all(unset(r.metadata) for r in filtered.results), filtered

    everything = ok(
        search_documents.sync_detailed(
            coll, client=bearer, body=SearchRequest.from_dict({"vector": doc.embedding, "limit": 10, "min_similarity": -1.0})
        ),
        SearchResponse,
    )
    assert sorted(r.id for r in everything.results) == ["doc-1", "doc-2", "doc-3"], everything
    threshold = (everything.results[0].similarity + everything.results[1].similarity) / 2
    nearest = ok(
        search_documents.sync_detailed(
            coll, client=bearer, body=SearchRequest.from_dict({"vector": doc.embedding, "limit": 10, "min_similarity": threshold})
        ),
        SearchResponse,
    )
    assert [r.id for r in nearest.results] == ["doc-1"], (threshold, nearest)
    above = ok(
        search_documents.sync_detailed(
            coll, client=bearer, body=SearchRequest.from_dict({"query": "yellow fruit", "limit": 10, "min_similarity": 0.2})
        ),
        SearchResponse,
    )
    assert all(r.similarity >= 0.2 for r in above.results), above
    assert "doc-2" in [r.id for r in above.results] and "doc-1" not in [r.id for r in above.results], above

    # Delete, read back, and a replay under x-idempotency-key (the retry does not find it gone).
    key = f"smoke-{uuid.uuid4().hex}"
    removed = delete_document.sync_detailed(coll, "doc-3", client=bearer, x_idempotency_key=key)
    ok(removed, RemoveResponse)
    assert removed.parsed.deleted and removed.parsed.id == "doc-3", removed.parsed
    err(get_document.sync_detailed(coll, "doc-3", client=bearer), 404, "NOT_FOUND")
    replay = delete_document.sync_detailed(coll, "doc-3", client=bearer, x_idempotency_key=key)
    ok(replay, RemoveResponse)
    assert replay.headers.get("idempotent-replayed") == "true" and replay.content == removed.content, replay
    err(delete_document.sync_detailed(coll, "doc-2", client=bearer, x_idempotency_key=key), 422, "UNPROCESSABLE")
    ok(get_document.sync_detailed(coll, "doc-2", client=bearer), DocumentView)
    err(delete_document.sync_detailed(coll, "doc-3", client=bearer), 404, "NOT_FOUND")

    # A wrong key as a bearer credential.
    err(get_document.sync_detailed(coll, "doc-1", client=bearer_client("qv_live_nope_nope")), 401, "UNAUTHORIZED")
    return doc


def nql(data, bearer, coll):
    """NQL: parameters, pagination (limit/offset/cursor) and a vector parameter."""
    result = ok(
        run_query.sync_detailed(
            client=bearer,
            body=QueryRequest.from_dict({"query": f"SELECT id, content FROM {coll} WHERE source = $1", "params": ["docs"]}),
        ),
        QueryResponse,
    )
    assert result.row_count == 1 and result.rows[0]["id"] == "doc-1", result
    assert result.rows[0]["content"].startswith("Quiver") and [f.name for f in result.fields] == ["id", "content"], result
    assert unset(result.total_count) and unset(result.next_cursor), "no page asked for, no page fields"
    # POST /query is the same endpoint as /api/v1/query.
    short = ok(
        query_short.sync_detailed(
            client=bearer,
            body=QueryRequest.from_dict({"query": f"SELECT id, content FROM {coll} WHERE source = $1", "params": ["docs"]}),
        ),
        QueryResponse,
    )
    assert [r.to_dict() for r in short.rows] == [r.to_dict() for r in result.rows], short

    pages = "pages"
    ok(
        insert_documents_batch.sync_detailed(
            pages,
            client=data,
            body=InsertRequest(
                documents=[
                    DocumentInput(
                        content=f"page {i}",
                        id=f"p-{i}",
                        embedding=vec(20 + i),
                        metadata=DocumentInputMetadataType0.from_dict({"n": i}),
                    )
                    for i in range(5)
                ]
            ),
        ),
        InsertResponse,
    )
    statement = f"SELECT id, n FROM {pages} WHERE n >= $1 ORDER BY id"

    def page(**extra):
        body = {"query": statement, "params": [0], **extra}
        return ok(run_query.sync_detailed(client=bearer, body=QueryRequest.from_dict(body)), QueryResponse)

    seen, cursor, hops = [], None, 0
    while True:
        current = page(limit=2, **({"cursor": cursor} if cursor else {}))
        hops += 1
        assert current.total_count == 5 and current.row_count == len(current.rows) <= 2, current
        seen += [row["id"] for row in current.rows]
        if not current.has_more:
            assert unset(current.next_cursor), current
            break
        assert isinstance(current.next_cursor, str), current
        cursor = current.next_cursor
    assert seen == [f"p-{i}" for i in range(5)] and hops == 3, (seen, hops)

    by_offset = page(limit=2, offset=3)
    assert [row["id"] for row in by_offset.rows] == ["p-3", "p-4"] and by_offset.has_more is False, by_offset
    assert [row["n"] for row in by_offset.rows] == [3, 4], by_offset
    middle = page(limit=1, offset=1)
    assert [row["id"] for row in middle.rows] == ["p-1"] and middle.has_more is True, middle
    # A cursor belongs to its query.
    other = {"query": f"SELECT id FROM {pages} ORDER BY id", "cursor": middle.next_cursor}
    err(run_query.sync_detailed(client=bearer, body=QueryRequest.from_dict(other)), 400, "VALIDATION_ERROR")

    # A vector parameter, ordered by the index (the seed page's first query).
    nearest = ok(
        run_query.sync_detailed(
            client=bearer,
            body=QueryRequest.from_dict(
                {
                    "query": f"SELECT id, content, 1 - (embedding <=> $1) AS similarity FROM {pages} ORDER BY embedding <=> $1 LIMIT 2",
                    "params": [vec(22)],
                }
            ),
        ),
        QueryResponse,
    )
    assert nearest.row_count == 2 and nearest.rows[0]["id"] == "p-2", nearest
    assert close(nearest.rows[0]["similarity"], 1.0) and nearest.rows[1]["similarity"] < 0.5, nearest
    assert {f.name: f.data_type_id for f in nearest.fields}["similarity"] == 701, nearest.fields


def tokens(control, project, data, ns):
    """A project token: read only, limited to one namespace, sent as a bearer credential."""
    ok(upsert_vectors.sync_detailed(client=data, body=UpsertRequest(vectors=[VectorInput(id="x", values=vec(5))], namespace="scratch")), UpsertResponse)
    minted = ok(
        create_token.sync_detailed(
            str(project.id), client=control, body=CreateToken(scopes=[Scope.READ], namespaces=[ns], ttl_seconds=600)
        ),
        TokenView,
        201,
    )
    assert minted.project_id == project.id and minted.scopes == [Scope.READ] and minted.namespaces == [ns], minted
    token = bearer_client(minted.token)
    found = ok(
        search_vectors.sync_detailed(client=token, body=VectorSearchRequest.from_dict({"namespace": ns, "vector": vec(5), "top_k": 1})),
        VectorSearchResponse,
    )
    assert [m.id for m in found.matches] == ["sku-5"], found
    assert [n.name for n in ok(list_namespaces.sync_detailed(client=token), NamespaceList).namespaces] == [ns]
    # Collections are namespaces too.
    everything = [n.name for n in ok(list_namespaces.sync_detailed(client=data), NamespaceList).namespaces]
    assert sorted(everything) == ["articles", "pages", ns, "scratch"], everything
    err(
        search_vectors.sync_detailed(client=token, body=VectorSearchRequest.from_dict({"namespace": "scratch", "vector": vec(5)})),
        403,
        "FORBIDDEN",
    )
    err(
        upsert_vectors.sync_detailed(client=token, body=UpsertRequest(vectors=[VectorInput(id="t", values=vec(0))], namespace=ns)),
        403,
        "FORBIDDEN",
    )
    err(create_token.sync_detailed(str(project.id), client=control, body=CreateToken(ttl_seconds=7200)), 400, "VALIDATION_ERROR")
    dropped = ok(delete_namespace.sync_detailed("scratch", client=data), Deleted)
    assert dropped.deleted and dropped.namespace == "scratch", dropped


def keys(control, project, admin_key, read_key, data, readonly, ns):
    """Listing and revoking keys; a revoked key is refused by the data plane."""
    listing = list_keys.sync_detailed(str(project.id), client=control)
    listed = {k.id: k for k in ok(listing, KeyList).keys}
    assert set(listed) == {admin_key.id, read_key.id}, listed
    for created in (admin_key, read_key):
        view = listed[created.id]
        assert (view.label, view.role, view.prefix) == (created.label, created.role, created.prefix), view
        assert created.key.startswith(view.prefix) and unset(view.revoked_at), view
        assert created.key not in listing.content.decode(), "a listing never shows a key's secret"

    no_content(revoke_key.sync_detailed(str(project.id), read_key.id, client=control))
    listed = {k.id: k for k in ok(list_keys.sync_detailed(str(project.id), client=control), KeyList).keys}
    assert not unset(listed[read_key.id].revoked_at) and unset(listed[admin_key.id].revoked_at), listed
    refused = eventually(
        lambda: list_namespaces.sync_detailed(client=readonly),
        lambda r: r.status_code != 200,
        "a revoked key is refused",
    )
    err(refused, 401, "UNAUTHORIZED")
    ok(list_namespaces.sync_detailed(client=data), NamespaceList)
    err(revoke_key.sync_detailed(str(project.id), "no-such-key", client=control), 404, "NOT_FOUND")


def projects(control, project, plans):
    """Listing, changing the plan of, and deleting projects; a deleted project's key is refused."""
    spare = ok(
        create_project.sync_detailed(
            client=control, body=CreateProject(name="smoke-spare", dimension=4, metric=Metric.EUCLIDEAN, plan="starter")
        ),
        ProjectView,
        201,
    )
    assert spare.plan == "starter" and spare.limits.queries_per_minute == plans["starter"].queries_per_minute, spare
    listed = ok(list_projects.sync_detailed(client=control), ProjectList).projects
    assert [p.id for p in listed] == [project.id, spare.id], listed  # oldest first

    spare_key = ok(
        create_key.sync_detailed(str(spare.id), client=control, body=CreateKey(label="spare", role=Role.ADMIN)), CreatedKey, 201
    )
    spare_data = data_client(spare_key.key)
    up = ok(
        upsert_vectors.sync_detailed(client=spare_data, body=UpsertRequest(vectors=[VectorInput(id="a", values=[1.0, 2.0, 3.0, 4.0])])),
        UpsertResponse,
    )
    assert up.namespace == "default", up

    def rate_limit(response):
        return response.headers.get("x-ratelimit-limit")

    before = list_namespaces.sync_detailed(client=spare_data)
    ok(before, NamespaceList)
    assert rate_limit(before) == str(plans["starter"].queries_per_minute), before.headers

    changed = ok(update_project.sync_detailed(str(spare.id), client=control, body=UpdateProject(plan="developer")), ProjectView)
    assert changed.id == spare.id and changed.plan == "developer", changed
    assert changed.limits.to_dict() == plans["developer"].to_dict(), changed.limits
    assert ok(get_project.sync_detailed(str(spare.id), client=control), ProjectView).plan == "developer"
    # The data plane takes the new plan's budget.
    eventually(
        lambda: list_namespaces.sync_detailed(client=spare_data),
        lambda r: r.status_code == 200 and rate_limit(r) == str(plans["developer"].queries_per_minute),
        "the data plane applies a plan change",
    )
    err(update_project.sync_detailed(str(spare.id), client=control, body=UpdateProject(plan="no-such-plan")), 400, "VALIDATION_ERROR")

    no_content(delete_project.sync_detailed(str(spare.id), client=control))
    err(get_project.sync_detailed(str(spare.id), client=control), 404, "NOT_FOUND")
    err(delete_project.sync_detailed(str(spare.id), client=control), 404, "NOT_FOUND")
    assert [p.id for p in ok(list_projects.sync_detailed(client=control), ProjectList).projects] == [project.id]
    refused = eventually(
        lambda: list_namespaces.sync_detailed(client=spare_data),
        lambda r: r.status_code != 200,
        "a deleted project's key is refused",
    )
    err(refused, 401, "UNAUTHORIZED")


def sign_out(email, signup_token, control):
    """Logout ends every session of the account; signing in again works."""
    no_content(logout.sync_detailed(client=control))
    for token in (signup_token, control.token):
        old = ControlAuthClient(base_url=CONTROL, token=token, raise_on_unexpected_status=True)
        err(list_projects.sync_detailed(client=old), 401, "UNAUTHORIZED")
    err(logout.sync_detailed(client=control), 401, "UNAUTHORIZED")
    anon = ControlClient(base_url=CONTROL, raise_on_unexpected_status=True)
    session = ok(login.sync_detailed(client=anon, body=Credentials(email=email, password=PASSWORD)), SessionView)
    control = ControlAuthClient(base_url=CONTROL, token=session.token, raise_on_unexpected_status=True)
    assert len(ok(list_projects.sync_detailed(client=control), ProjectList).projects) == 1


def main():
    health()
    email, signup_token, control, plans = accounts()
    project = ok(
        create_project.sync_detailed(
            client=control,
            body=CreateProject(name="smoke", dimension=DIM, metric=Metric.COSINE, plan="business_plus"),
        ),
        ProjectView,
        201,
    )
    assert project.plan == "business_plus" and project.metric == Metric.COSINE, project
    got = ok(get_project.sync_detailed(str(project.id), client=control), ProjectView)
    assert got.id == project.id and got.dimension == DIM and got.name == "smoke", got
    err(get_project.sync_detailed(str(uuid.uuid4()), client=control), 404, "NOT_FOUND")
    admin_key = ok(
        create_key.sync_detailed(str(project.id), client=control, body=CreateKey(label="admin", role=Role.ADMIN)),
        CreatedKey,
        201,
    )
    read_key = ok(
        create_key.sync_detailed(str(project.id), client=control, body=CreateKey(label="ro", role=Role.APP_READONLY)),
        CreatedKey,
        201,
    )
    assert admin_key.role == Role.ADMIN and read_key.key.startswith("qv_live_"), (admin_key, read_key)

    data = data_client(admin_key.key)
    bearer = bearer_client(admin_key.key)
    readonly = data_client(read_key.key)
    ns = "products"

    vectors(data, ns)
    namespaces = ok(list_namespaces.sync_detailed(client=data), NamespaceList)
    assert [(n.name, n.vector_count) for n in namespaces.namespaces] == [(ns, 6)], namespaces

    coll = "articles"
    documents(data, bearer, coll)
    nql(data, bearer, coll)
    models = ok(list_models.sync_detailed(client=data), ModelList)
    assert models.default_model == MODEL, models
    assert any(m.name == MODEL and m.available and m.dimension == DIM for m in models.models), models

    # Errors arrive as the typed envelope.
    bad = err(
        upsert_vectors.sync_detailed(client=data, body=UpsertRequest(vectors=[VectorInput(id="x", values=[1.0, 2.0])], namespace=ns)),
        400,
        "VALIDATION_ERROR",
    )
    assert "dimension" in bad.message
    err(get_document.sync_detailed("no-such-collection", "doc-1", client=data), 404, "NOT_FOUND")
    err(
        upsert_vectors.sync_detailed(client=readonly, body=UpsertRequest(vectors=[VectorInput(id="x", values=vec(0))], namespace=ns)),
        403,
        "FORBIDDEN",
    )
    # A read-only key reads.
    ok(search_vectors.sync_detailed(client=readonly, body=VectorSearchRequest.from_dict({"namespace": ns, "vector": vec(1)})), VectorSearchResponse)

    tokens(control, project, data, ns)
    keys(control, project, admin_key, read_key, data, readonly, ns)
    projects(control, project, plans)

    dropped = ok(delete_namespace.sync_detailed(ns, client=data), Deleted)
    assert dropped.deleted and dropped.namespace == ns, dropped
    err(search_vectors.sync_detailed(client=data, body=VectorSearchRequest.from_dict({"namespace": ns, "vector": vec(1)})), 404, "NOT_FOUND")

    sign_out(email, signup_token, control)
    missing = sorted(OPERATIONS - CALLED)
    assert not missing, f"operations of openapi/*.json that smoke.py never calls: {missing}"
    print(f"python client smoke test: ok ({len(CALLED)} operations)")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:
        print(f"python client smoke test FAILED: {exc}", file=sys.stderr)
        raise
