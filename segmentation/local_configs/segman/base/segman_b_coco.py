# SegMAN-B on COCO-Stuff 164k, drop path 0.2.
_base_ = ['../tiny/segman_t_coco.py']
model = dict(
    backbone=dict(type='SegMANEncoder_b', pretrained='../pretrained/SegMAN_Encoder_b.pth.tar', drop_path_rate=0.2),
    decode_head=dict(in_channels=[96, 160, 364, 560], channels=180, feat_proj_dim=320))
evaluation = dict(_delete_=True, interval=4000, metric='mIoU', pre_eval=True)
