"""Drives a live Quiver through the Python clients generated from openapi/*.json.

Run by clients/python/test_client.sh, which generates the clients and starts Quiver:
QUIVER_CONTROL_URL and QUIVER_DATA_URL say where the planes listen. Every call goes
through the generated functions and every answer is checked as a typed model, so a
spec that does not describe what the server sends fails here.
"""

import base64
import os
import struct
import sys
import uuid

from quiver_control_client import AuthenticatedClient as ControlAuthClient
from quiver_control_client import Client as ControlClient
from quiver_control_client.api.accounts import signup
from quiver_control_client.api.keys import create_key
from quiver_control_client.api.plans import list_plans
from quiver_control_client.api.projects import create_project, get_project
from quiver_control_client.models import (
    CreateKey,
    CreatedKey,
    CreateProject,
    Credentials,
    Metric,
    PlanList,
    ProjectView,
    Role,
    SessionView,
)
from quiver_data_client import AuthenticatedClient as DataClient
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
from quiver_data_client.api.namespaces import delete_namespace, list_namespaces
from quiver_data_client.api.query import run_query
from quiver_data_client.api.vectors import (
    delete_vectors,
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

CONTROL = os.environ["QUIVER_CONTROL_URL"]
DATA = os.environ["QUIVER_DATA_URL"]
# The local model's dimension, so documents can be embedded server-side.
DIM = 384


def ok(response, model, status=200):
    """The typed body of a successful response, or a failure that shows the raw body."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.content!r}"
    assert isinstance(response.parsed, model), f"expected {model.__name__}, got {response.parsed!r}"
    return response.parsed


def err(response, status, code):
    """The typed error envelope of a failed response."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.content!r}"
    parsed = response.parsed
    assert isinstance(parsed, ErrorEnvelope), f"expected ErrorEnvelope, got {parsed!r}"
    assert parsed.error.code == code and parsed.error.status == status, parsed
    return parsed.error


def vec(i):
    values = [0.0] * DIM
    values[i % DIM] = 1.0
    values[(i + 1) % DIM] = 0.5
    return values


def main():
    # Control plane: account, project, keys.
    anon = ControlClient(base_url=CONTROL, raise_on_unexpected_status=True)
    plans = ok(list_plans.sync_detailed(client=anon), PlanList)
    assert any(p.id == "business_plus" for p in plans.plans)
    email = f"smoke-{uuid.uuid4().hex[:12]}@example.com"
    session = ok(
        signup.sync_detailed(client=anon, body=Credentials(email=email, password="correct horse battery")),
        SessionView,
        201,
    )
    control = ControlAuthClient(base_url=CONTROL, token=session.token, raise_on_unexpected_status=True)
    project = ok(
        create_project.sync_detailed(
            client=control,
            body=CreateProject(name="smoke", dimension=DIM, metric=Metric.COSINE, plan="business_plus"),
        ),
        ProjectView,
        201,
    )
    assert ok(get_project.sync_detailed(str(project.id), client=control), ProjectView).dimension == DIM
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
    assert admin_key.role == Role.ADMIN and read_key.key.startswith("qv_live_")

    def data_client(key):
        return DataClient(
            base_url=DATA, token=key, prefix="", auth_header_name="x-api-key", raise_on_unexpected_status=True
        )

    data = data_client(admin_key.key)
    readonly = data_client(read_key.key)
    ns = "products"

    # Vectors.
    vectors = [
        VectorInput(
            id=f"sku-{i}",
            values=vec(i),
            metadata=VectorInputMetadataType0.from_dict({"category": "hardware" if i % 2 else "garden", "price": i}),
        )
        for i in range(10)
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
    assert found.matches[0].id == "sku-3", found
    assert all(m.metadata["category"] == "hardware" for m in found.matches)

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

    one = fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, id="sku-1"))
    assert one.status_code == 200 and one.parsed["id"] == "sku-1"
    many = fetch_vectors.sync_detailed(client=data, body=VectorQueryRequest(namespace=ns, ids=["sku-1", "sku-2", "nope"]))
    assert many.status_code == 200 and sorted(v["id"] for v in many.parsed["vectors"]) == ["sku-1", "sku-2"]

    updated = ok(
        update_vector.sync_detailed(client=data, body=UpdateRequest.from_dict({"namespace": ns, "id": "sku-1", "metadata": {"price": 99}})),
        UpdateResponse,
    )
    assert updated.updated and updated.id == "sku-1"

    page = ok(list_vectors.sync_detailed(client=data, namespace=ns, prefix="sku-", limit=4), ListResponse)
    assert len(page.ids) == 4 and isinstance(page.next_cursor, str)

    gone = ok(delete_vectors.sync_detailed(client=data, body=DeleteRequest(namespace=ns, ids=["sku-0", "sku-2"])), DeleteResponse)
    assert gone.deleted_count == 2
    gone = ok(
        delete_vectors.sync_detailed(
            client=data, body=DeleteRequest(namespace=ns, filter_=DeleteRequestFilterType0.from_dict({"category": "garden"}))
        ),
        DeleteResponse,
    )
    assert gone.deleted_count == 3, gone  # sku-4, 6, 8

    namespaces = ok(list_namespaces.sync_detailed(client=data), NamespaceList)
    assert [n.name for n in namespaces.namespaces] == [ns]

    # Documents, embedded by the local model when they bring no embedding.
    coll = "articles"
    inserted = ok(
        insert_documents.sync_detailed(
            coll,
            client=data,
            body=InsertRequest(
                documents=[
                    DocumentInput(
                        content="Quiver stores vectors and searches them by similarity.",
                        id="doc-1",
                        metadata=DocumentInputMetadataType0.from_dict({"source": "docs"}),
                    )
                ]
            ),
        ),
        InsertResponse,
    )
    assert inserted.ids == ["doc-1"]
    batch = ok(
        insert_documents_batch.sync_detailed(
            coll,
            client=data,
            body=InsertRequest(
                documents=[
                    DocumentInput(content="Bananas are yellow fruit that grow in bunches.", id="doc-2"),
                    DocumentInput(content="An explicit embedding.", id="doc-3", embedding=vec(7)),
                ]
            ),
        ),
        InsertResponse,
    )
    assert batch.inserted == 2
    doc = ok(get_document.sync_detailed(coll, "doc-1", client=data), DocumentView)
    assert doc.content.startswith("Quiver") and len(doc.embedding) == DIM
    replaced = ok(
        update_document.sync_detailed(
            coll, "doc-3", client=data, body=ReplaceRequest(content="Yellow bananas, replaced.", regenerate_embedding=True)
        ),
        ReplaceResponse,
    )
    assert replaced.updated
    docs = ok(list_documents.sync_detailed(coll, client=data, limit=10), DocumentPage)
    assert docs.row_count == 3
    by_vector = ok(search_documents.sync_detailed(coll, client=data, body=SearchRequest(vector=doc.embedding, limit=1)), SearchResponse)
    assert by_vector.results[0].id == "doc-1"
    by_text = ok(
        search_documents.sync_detailed(coll, client=data, body=SearchRequest.from_dict({"query": "yellow fruit", "limit": 3})),
        SearchResponse,
    )
    assert by_text.results[0].id in ("doc-2", "doc-3"), by_text
    removed = ok(delete_document.sync_detailed(coll, "doc-3", client=data), RemoveResponse)
    assert removed.deleted

    # NQL and models.
    result = ok(
        run_query.sync_detailed(
            client=data, body=QueryRequest.from_dict({"query": f"SELECT id, content FROM {coll} WHERE source = $1", "params": ["docs"]})
        ),
        QueryResponse,
    )
    assert result.row_count == 1 and result.rows[0]["id"] == "doc-1", result
    models = ok(list_models.sync_detailed(client=data), ModelList)
    assert any(m.available for m in models.models)

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

    dropped = ok(delete_namespace.sync_detailed(ns, client=data), Deleted)
    assert dropped.deleted
    print("python client smoke test: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:
        print(f"python client smoke test FAILED: {exc}", file=sys.stderr)
        raise
