"""Which model serves which job. The project names its models by role:

  * descriptor - near-duplicate candidates (with pHash): the fast colour/layout descriptor by
                 default; duplicates are about pixels, not meaning;
  * semantic   - selection, typicality, clusters, the embedding map, outliers and image/folder
                 retrieval: the pretrained backbone by default;
  * domain     - the newest domain model (a projection of the semantic model's vectors trained on
                 the drops by the domain_embedder asset), where one has been trained.

A selection or retrieval names a role or a stored model id (`model`); empty, the project default
(settings: CURATION_SELECTION_MODEL / CURATION_RETRIEVAL_MODEL, both `semantic`). Ingest embeds
with every model the project names (descriptor and semantic, each once per content).

A role's model is loaded when its id is needed (ids name the weights and preprocessing), once per
process and configuration: choosing the descriptor never loads the semantic network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from curation_pipeline.resources.catalog import Catalog, DomainModelRecord
from curation_pipeline.resources.embedders import Embedder, ProjectedEmbedder

from .embed import EmbedOptions, model_id_for

MODEL_ROLES = {
    "descriptor": "near-duplicate candidates (with pHash)",
    "semantic": "selection, typicality, clusters, the embedding map, outliers, image/folder retrieval",
    "domain": "the newest domain model trained on the drops (domain_embedder)",
}


@dataclass
class ResolvedModel:
    """A job's model: its stored id, the role it was chosen by (or "" for an explicit id), and how to
    embed new images with it (None where this project cannot: a stored id of another setup)."""

    model_id: str
    role: str
    _embedder: Callable[[], Embedder] | None = field(default=None, repr=False)
    options: EmbedOptions = field(default_factory=EmbedOptions)
    """How new images are decoded and batched for this model (its embedder resource's options)."""

    @property
    def can_embed(self) -> bool:
        return self._embedder is not None

    def embedder(self) -> Embedder:
        if self._embedder is None:
            raise ValueError(
                f"model {self.model_id!r} is stored but not one this project's configuration can embed with "
                f"(its roles: {', '.join(MODEL_ROLES)}): query images and folders need one of those"
            )
        return self._embedder()

    def describe(self) -> str:
        return f"{self.model_id} ({self.role})" if self.role else self.model_id


def no_domain_model_error() -> ValueError:
    return ValueError(
        "no domain model has been trained yet: materialize domain_embedder (`curation train-domain`, or the "
        "Dagster UI), or choose model 'semantic'"
    )


@dataclass
class ProjectModels:
    """The project's models by role. `semantic` and `descriptor` load their embedder (once per
    process and configuration); their options decide the stored id (reduced-scale decoding)."""

    semantic: Callable[[], Embedder]
    semantic_options: EmbedOptions
    descriptor: Callable[[], Embedder]
    descriptor_options: EmbedOptions

    def ingest_roles(self) -> dict[str, tuple[Embedder, EmbedOptions]]:
        """What ingest embeds with: every configured model, each once (a project whose semantic
        model is the descriptor embeds once)."""
        return {
            "descriptor": (self.descriptor(), self.descriptor_options),
            "semantic": (self.semantic(), self.semantic_options),
        }

    def semantic_id(self) -> str:
        return model_id_for(self.semantic(), self.semantic_options)

    def descriptor_id(self) -> str:
        return model_id_for(self.descriptor(), self.descriptor_options)

    def resolve(self, catalog: Catalog, choice: str) -> ResolvedModel:
        """A role (semantic, descriptor, domain) or a stored model id -> the model serving the job."""
        choice = (choice or "semantic").strip()
        if choice == "semantic":
            return ResolvedModel(self.semantic_id(), "semantic", self.semantic, self.semantic_options)
        if choice == "descriptor":
            return ResolvedModel(self.descriptor_id(), "descriptor", self.descriptor, self.descriptor_options)
        if choice == "domain":
            record = catalog.current_domain_model()
            if record is None:
                raise no_domain_model_error()
            return self._domain(record, "domain")
        if ":" not in choice:
            raise ValueError(f"model {choice!r}: give a role ({', '.join(MODEL_ROLES)}) or a stored model id")
        if choice.startswith("domain:"):
            return self._domain(catalog.domain_model(choice), "")
        for role in ("descriptor", "semantic"):
            resolved = self.resolve(catalog, role)
            if resolved.model_id == choice:
                return resolved
        return ResolvedModel(choice, "")

    def _domain(self, record: DomainModelRecord, role: str) -> ResolvedModel:
        semantic_id = self.semantic_id()

        def load() -> Embedder:
            if record.backbone_model != semantic_id:
                raise ValueError(
                    f"domain model {record.model_id} projects {record.backbone_model} vectors, but the semantic "
                    f"model now is {semantic_id}: retrain it (domain_embedder) to embed new images"
                )
            return ProjectedEmbedder(self.semantic(), domain_head(record), record.model_id)

        return ResolvedModel(record.model_id, role, load, self.semantic_options)


def domain_head(record: DomainModelRecord):
    """The stored head of a domain model, checked against its recorded content hash."""
    from curation_pipeline.resources.domain_model import DomainHead

    head = DomainHead.from_bytes(record.weights)
    if head.sha256 != record.sha256:
        raise ValueError(f"domain model {record.model_id}: stored weights do not match their hash {record.sha256[:12]}")
    return head
