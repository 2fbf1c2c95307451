// Package util holds the Interval type of kube-arangodb's pkg/util.
package util

import "time"

// Interval is a time.Duration: how long until the next inspection.
type Interval time.Duration
