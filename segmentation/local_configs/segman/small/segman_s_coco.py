# SegMAN-S on COCO-Stuff 164k, drop path 0.2.
_base_ = ['../tiny/segman_t_coco.py']
model = dict(
    backbone=dict(type='SegMANEncoder_s', pretrained='../pretrained/SegMAN_Encoder_s.pth.tar', drop_path_rate=0.2),
    decode_head=dict(in_channels=[64, 144, 288, 512], channels=144, feat_proj_dim=288))
evaluation = dict(_delete_=True, interval=4000, metric='mIoU', pre_eval=True, save_best='mIoU')
