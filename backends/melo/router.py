"""MELO's vector database: clusters of keys, each key pointing at the LoRA block that serves it.

Rows are clusters ``(center, radius, label, points)``; a point is ``(key, block)``.  Adding a
key (docs/methods/melo.md): far from every cluster, it opens one; near a cluster with the same
label, it joins it (the center becomes the mean, the radius the largest distance, at least
the initial one); near a cluster with another label, it opens one and both radii halve,
forgetting the old cluster's points that fall outside.  Routing a query: the nearest center;
inside its radius, the block of the cluster's nearest point; else -1 (no block: unedited).

    >>> router = Router.empty(dim=64)
    >>> router.add(key, label=0, block=0, radius=2.0)          # doctest: +SKIP
    >>> router.route(queries)                                  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from editspec.families.memory.codebook import SLACK, nearest


@dataclass
class Router:
    """Cluster centers [c, d], radii [c], labels [c]; points [p, d] with their cluster and block [p]."""

    centers: torch.Tensor
    radii: torch.Tensor
    labels: torch.Tensor
    points: torch.Tensor
    point_cluster: torch.Tensor
    point_block: torch.Tensor

    @classmethod
    def empty(cls, dim: int) -> "Router":
        long = torch.zeros(0, dtype=torch.long)
        return cls(torch.zeros(0, dim), torch.zeros(0), long, torch.zeros(0, dim), long.clone(), long.clone())

    def add(self, key: torch.Tensor, label: int, block: int, radius: float) -> None:
        """Add one key of an edit (`label`) served by `block`."""
        key = key.detach().float().cpu()
        if len(self.centers):
            distance, index = nearest(key[None], self.centers)
            d, near = float(distance[0]), int(index[0])
            if d <= float(self.radii[near]) + radius:
                if int(self.labels[near]) == label:
                    self._add_point(key, near, block)
                    members = self.points[self.point_cluster == near]
                    self.centers[near] = members.mean(0)
                    spread = float(torch.linalg.vector_norm(members - self.centers[near], dim=1).max())
                    self.radii[near] = max(radius, spread * (1 + SLACK))
                    return
                self.radii[near] = self.radii[near] / 2
                self._forget_outside(near)
                radius = radius / 2
        self.centers = torch.cat([self.centers, key[None]])
        self.radii = torch.cat([self.radii, torch.tensor([radius])])
        self.labels = torch.cat([self.labels, torch.tensor([label])])
        self._add_point(key, len(self.centers) - 1, block)

    def _add_point(self, key: torch.Tensor, cluster: int, block: int) -> None:
        self.points = torch.cat([self.points, key[None]])
        self.point_cluster = torch.cat([self.point_cluster, torch.tensor([cluster])])
        self.point_block = torch.cat([self.point_block, torch.tensor([block])])

    def _forget_outside(self, cluster: int) -> None:
        inside = torch.linalg.vector_norm(self.points - self.centers[cluster], dim=1) <= self.radii[cluster]
        keep = (self.point_cluster != cluster) | inside
        self.points, self.point_cluster, self.point_block = self.points[keep], self.point_cluster[keep], self.point_block[keep]

    def route(self, queries: torch.Tensor) -> torch.Tensor:
        """The block for each query [..., d] (-1: outside every cluster, or a cluster with no points left)."""
        shape = queries.shape[:-1]
        if not len(self.points):
            return torch.full(shape, -1, dtype=torch.long, device=queries.device)
        flat = queries.reshape(-1, queries.shape[-1]).float()
        centers = self.centers.to(flat.device)
        best, cluster = nearest(flat, centers)
        inside = best <= self.radii.to(flat.device)[cluster]
        to_points = torch.cdist(flat[None], self.points.to(flat.device)[None])[0]  # [m, p]: which point, not how far
        foreign = self.point_cluster.to(flat.device)[None, :] != cluster[:, None]
        to_points = to_points.masked_fill(foreign, float("inf"))
        distance, point = to_points.min(dim=1)
        found = inside & torch.isfinite(distance)
        blocks = self.point_block.to(flat.device)[point]
        return torch.where(found, blocks, torch.full_like(blocks, -1)).reshape(shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"router.centers": self.centers, "router.radii": self.radii, "router.labels": self.labels,
                "router.points": self.points, "router.point_cluster": self.point_cluster,
                "router.point_block": self.point_block}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Router":
        get = lambda name: tensors[f"router.{name}"]  # noqa: E731
        return cls(get("centers").float(), get("radii").float(), get("labels").long(), get("points").float(),
                   get("point_cluster").long(), get("point_block").long())
