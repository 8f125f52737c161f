package pluginhost

// checkWritable is a no-op on Windows: ACLs, not mode bits, protect the
// plugin directory there (the installer sets them).
func checkWritable(string) error { return nil }
