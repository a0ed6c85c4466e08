"""Plate pipeline: detect -> rectify -> classify -> read -> grammar. Pure numpy in and out."""
