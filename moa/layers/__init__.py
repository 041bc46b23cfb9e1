"""Layers: run neurons concurrently (`Layer`) and combine their answers (`AggregationLayer`)."""

from moa.layers.aggregation import AggregationLayer
from moa.layers.layer import Layer

__all__ = ["AggregationLayer", "Layer"]
