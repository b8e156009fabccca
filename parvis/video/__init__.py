"""Video analytics: sources, batching across streams (muxer), tracking, annotation, sinks."""
