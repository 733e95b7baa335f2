"""Building blocks shared by the three services: errors, settings, server set-up, embedding codec."""
