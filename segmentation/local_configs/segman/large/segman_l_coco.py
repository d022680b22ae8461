# SegMAN-L on COCO-Stuff 164k.
# The original ships no training script for L: drop path 0.25 follows B (an assumption).
_base_ = ['../tiny/segman_t_coco.py']
model = dict(
    backbone=dict(type='SegMANEncoder_l', pretrained='../pretrained/SegMAN_Encoder_l.pth.tar', drop_path_rate=0.25),
    decode_head=dict(in_channels=[96, 192, 432, 640], channels=224, feat_proj_dim=432))
evaluation = dict(_delete_=True, interval=4000, metric='mIoU', pre_eval=True)
