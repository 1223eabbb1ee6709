// placeholder until the pipeline layer lands
