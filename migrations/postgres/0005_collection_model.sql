-- The embedding model that made a collection's vectors from its documents' text, set
-- by the first write that embedded text: later requests that name no model use it,
-- and naming another is refused, so that no collection mixes two models' vectors.
ALTER TABLE namespaces ADD COLUMN embedding_model TEXT;
