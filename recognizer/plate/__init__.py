"""Plate pipeline: detect -> rectify (warp by the corners; two-row plates split into one
line) -> read (PP-OCRv4, clp_v2_c where it does not give a valid plate) -> grammar
(candidates, validity) -> province classifier (re-decides the first character) -> classify
(plate type by colour and format). Pure numpy in and out."""
