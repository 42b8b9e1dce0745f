# Cascade Mask R-CNN Swin-S: the Swin-T config with Swin-S depths.
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_4conv1f-giou_3x_coco.py'
model = dict(backbone=dict(depths=[2, 2, 18, 2]))
