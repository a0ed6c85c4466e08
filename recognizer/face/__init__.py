"""Face pipeline: detect -> align -> embed, plus quality. Pure numpy in and out."""
