package sdk

import (
	"os"
	"time"
)

func pollParent(ppid int, every time.Duration) {
	for {
		time.Sleep(every)
		if os.Getppid() != ppid {
			os.Exit(1)
		}
	}
}
