"""The one batched detect stage and what it runs: detector families (YOLO, SSD, MTCNN) around an inference
engine, motion regions and tiles, and COCO evaluation of a detector. Data flows on to ``pipeline.analyze``.
"""
