# SegMAN-B on Cityscapes, drop path 0.25.
_base_ = ['../tiny/segman_t_cityscapes.py']
model = dict(
    backbone=dict(type='SegMANEncoder_b', pretrained='../pretrained/SegMAN_Encoder_b.pth.tar', drop_path_rate=0.25),
    decode_head=dict(in_channels=[96, 160, 364, 560], channels=180, feat_proj_dim=320))
evaluation = dict(_delete_=True, interval=4000, metric='mIoU', pre_eval=True)
