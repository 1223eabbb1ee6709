// placeholder until the sched layer lands
