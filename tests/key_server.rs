// placeholder, replaced by the test writer
