# SegMAN-L2 on Cityscapes, whole-image test at 2048×1024 (no released ImageNet weights for L2).
# The original ships no training script for L: drop path 0.25 follows B (an assumption).
_base_ = ['../tiny/segman_t_cityscapes.py']
model = dict(
    backbone=dict(type='SegMANEncoder_l2', pretrained='../pretrained/SegMAN_Encoder_l2.pth.tar', drop_path_rate=0.25),
    decode_head=dict(in_channels=[96, 192, 448, 640], channels=224, feat_proj_dim=448),
    test_cfg=dict(_delete_=True, mode='whole'))
evaluation = dict(_delete_=True, interval=8000, metric='mIoU', pre_eval=True)
