package actors

import "syscall"

// read fills the bytes a file really takes on disk (sparse files count
// only their allocated blocks).
func (f *fileBlocks) read(path string) bool {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return false
	}
	f.bytes = st.Blocks * 512
	return true
}
